import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))
# the tools' folder, for the tools the tests load by path and their packages (see scripts/bundle_path.py);
# appended, it shadows nothing installed
sys.path.append(str(Path(__file__).resolve().parents[1] / "scripts"))
