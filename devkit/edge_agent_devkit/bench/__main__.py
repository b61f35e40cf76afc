"""`python -m edge_agent_devkit.bench [--quick] [--out PATH] [--only audio|system|arm64|soak]`."""

from __future__ import annotations

import sys

from edge_agent_devkit.bench.report import main

if __name__ == "__main__":
    sys.exit(main())
