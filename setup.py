"""Package discovery. The design card fixes a top-level layout (stream/, featurestore/, model/, serving/);
each folder is installed as a sub-package of `pinrec` so that generic names such as `model` never collide in
site-packages. Every package below those folders is found, none is listed by hand."""

from setuptools import find_packages, setup

PARTS = {
    "pinrec": "pinrec",
    "pinrec.stream": "stream",
    "pinrec.featurestore": "featurestore",
    "pinrec.model": "model",
    "pinrec.serving": "serving",
}


def discover() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in PARTS.items():
        package_dir[name] = folder
        packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]
    return packages, package_dir


packages, package_dir = discover()
setup(packages=packages, package_dir=package_dir, package_data={"pinrec.model.data": ["*.md"]})
