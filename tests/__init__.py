"""The test suite (a package: its modules import their helpers from :mod:`tests.support`)."""
