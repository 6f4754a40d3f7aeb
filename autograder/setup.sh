#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (tutorials/assignments/README.md,
# "Gradescope"). The grader needs Python 3.10+, NumPy and SciPy, and util-linux's unshare for its
# private file tree; the repository itself is used from /autograder/source/slimgpt, not installed.
set -euo pipefail
apt-get install -y --no-install-recommends python3 python3-pip util-linux
pip3 install "numpy>=1.24" "scipy>=1.10" || pip3 install --break-system-packages "numpy>=1.24" "scipy>=1.10"
