"""fedyolo.runtime: the device side. Loads a bundle, trains, evaluates, profiles, joins a federation.

Never imports torch (checked by tests/test_import_boundaries.py).
"""
