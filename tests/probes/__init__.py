"""Tests of bnjax.probes, one module per room of the package (cases.py: shared cases).

A package, so that its conftest.py is imported as ``probes.conftest`` and never shadows
tests/conftest.py for ``from conftest import ROOT`` (pytest's prepend import mode).
"""
