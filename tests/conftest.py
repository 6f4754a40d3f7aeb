import sys
from pathlib import Path

# tests/ holds shared helpers (tolerances.py); make them importable under importlib mode.
sys.path.insert(0, str(Path(__file__).parent))
