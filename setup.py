"""Builds the con2 package. The native extension con2._C is added by build logic below
when its sources exist (see csrc/)."""
from setuptools import setup

setup()
