"""Test-wide settings: DDS stays on this host and every test run gets its own ROS domain."""
import os
import random

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
if "TINYVLA_TEST_DOMAIN_SET" not in os.environ:
    # 1..100 keeps clear of the default domain 0 and of the ports of high domain ids.
    os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 100))
    os.environ["TINYVLA_TEST_DOMAIN_SET"] = "1"
