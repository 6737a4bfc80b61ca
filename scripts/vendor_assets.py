"""The browser assets omnipush serves, copied from the npm packages that package-lock.json pins.

They are committed with the Python sources so that a wheel, `pip install .` and the image serve
`/demo` and `/docs` without npm. `make vendor` runs this after package-lock.json changed; a test
checks that the committed files are still byte for byte the locked packages' files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"

#: Where each asset comes from (under node_modules/) -> where it is served from (in the repo).
ASSETS: dict[str, str] = {
    "socket.io-client/dist/socket.io.min.js": "ws_gateway/static/socket.io.min.js",
    "swagger-ui-dist/swagger-ui-bundle.js": "producer_api/static/swagger-ui/swagger-ui-bundle.js",
    "swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt": (
        "producer_api/static/swagger-ui/swagger-ui-bundle.js.LICENSE.txt"
    ),
    "swagger-ui-dist/swagger-ui-standalone-preset.js": (
        "producer_api/static/swagger-ui/swagger-ui-standalone-preset.js"
    ),
    "swagger-ui-dist/swagger-ui-standalone-preset.js.LICENSE.txt": (
        "producer_api/static/swagger-ui/swagger-ui-standalone-preset.js.LICENSE.txt"
    ),
    "swagger-ui-dist/swagger-ui.css": "producer_api/static/swagger-ui/swagger-ui.css",
    "swagger-ui-dist/favicon-32x32.png": "producer_api/static/swagger-ui/favicon-32x32.png",
    "swagger-ui-dist/LICENSE": "producer_api/static/swagger-ui/LICENSE",
    "swagger-ui-dist/NOTICE": "producer_api/static/swagger-ui/NOTICE",
}


def vendor(node_modules: Path = NODE_MODULES, root: Path = ROOT) -> list[Path]:
    """Copy every asset into the repository; the paths written."""
    written = []
    for source, destination in ASSETS.items():
        target = root / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(node_modules / source, target)
        written.append(target)
    return written


def main() -> int:
    if not NODE_MODULES.is_dir():
        print(
            "vendor: node_modules is missing; run `npm ci --ignore-scripts` first", file=sys.stderr
        )
        return 1
    for path in vendor():
        print(f"vendor: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
