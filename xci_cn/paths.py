"""Where the files shipped beside the package live (a checkout is the install
Jenkins uses: scenarios/, playbooks/, samples/ and jjb/ sit next to xci_cn/)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS_DIR = REPO_ROOT / "scenarios"
PLAYBOOKS_DIR = REPO_ROOT / "playbooks"
SAMPLES_DIR = REPO_ROOT / "samples"
JJB_DIR = REPO_ROOT / "jjb"
