# powercut.py is a script (`python tests/powercut/powercut.py`), and stracelog.py, tracelog.py, crashstates.py and
# explore.py are its modules: none is a test module. test_powercut.py imports them from here.
import os
import sys

collect_ignore = ["powercut.py", "tracelog.py", "stracelog.py", "crashstates.py", "explore.py"]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
