"""Auto-graded exercises.

- :mod:`tinyllm.grading.generate`: ``tinyllm make-exercises`` turns ``solutions/NN_topic.ipynb``
  into the student notebooks ``exercises/NN_topic.ipynb``.
- :mod:`tinyllm.grading.cli`: ``tinyllm grade`` (tables, ``--json``, ``--all``).
- :mod:`tinyllm.grading.runner`: grading a notebook or plain source (the checks catalogue, judging, the
  entry points); the learner's code runs in :mod:`tinyllm.grading.sandbox`, a separate isolated process that
  only sees the inputs; both it and the notebook's kernel are confined by :mod:`tinyllm.grading.jail`. Its
  parts: :mod:`~tinyllm.grading.notebook` (reading and executing the notebook, its code cells),
  :mod:`~tinyllm.grading.process` (starting, talking to and stopping the sandbox, decoding its replies),
  :mod:`~tinyllm.grading.remote` (end-to-end tests: the proxies that call the learner's code in the sandbox)
  and :mod:`~tinyllm.grading.report` (the results).
- :mod:`tinyllm.grading.core`: the vocabulary of the graded checks in ``checks/NN_topic.py``.
"""
