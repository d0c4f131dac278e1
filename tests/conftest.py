"""Settings every test run needs, in both Python environments (engine and QGIS)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")        # never spend time on the network
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
