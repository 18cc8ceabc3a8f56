"""Package discovery for the one distribution, `streamserve`.

Metadata lives in pyproject.toml. This file only maps the repository's top-level folders to
subpackages: `pipelines/` installs as `streamserve.pipelines`, and so on, including their nested
packages, so nothing lands in site-packages under a generic top-level name.
"""

import os

from setuptools import find_packages, setup

SUBPACKAGES = ["pipelines", "schedulers", "kv_rolling", "transport", "kernels"]
DATA = ["*.json", "*.safetensors", "*.html", "*.js", "*.css", "*.md", "*.py"]

packages = ["streamserve", *(f"streamserve.{p}" for p in find_packages("streamserve"))]
package_dir = {"streamserve": "streamserve"}
for folder in SUBPACKAGES:
    packages.append(f"streamserve.{folder}")
    packages += [f"streamserve.{folder}.{p}" for p in find_packages(folder)]
    package_dir[f"streamserve.{folder}"] = folder

# The web demo (static pages and the OBS script) ships as data inside the package.
package_dir["streamserve.web_demo"] = "web_demo"
for root, dirs, _ in os.walk("web_demo"):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
    packages.append("streamserve." + root.replace(os.sep, "."))

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"": DATA},
    include_package_data=False,
)
