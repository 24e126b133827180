# Only here because pyproject.toml cannot say "every mmtrain package, plus conf/ installed as
# mmtrain.conf" (packages.find and a mapped extra package do not combine). Everything else is in
# pyproject.toml.
from setuptools import find_packages, setup

setup(packages=find_packages(include=["mmtrain", "mmtrain.*"]) + ["mmtrain.conf"])
