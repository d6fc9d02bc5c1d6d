"""Helpers shared by the tests: models and their training (:mod:`.models`), running a
``.tflite`` in LiteRT (:mod:`.litert_run`), comparing its outputs with Keras
(:mod:`.tflite_checks`), and the scripts some tests run in fresh interpreters
(:mod:`.subprocesses` starts :mod:`.distribute_run`, :mod:`.multiworker_run`,
:mod:`.resume_run` as ``python -m tests.support.<name>``)."""
