"""Auto-graded exercises.

- :mod:`tinyllm.grading.generate`: ``tinyllm make-exercises`` turns ``solutions/NN_topic.ipynb``
  into the student notebooks ``exercises/NN_topic.ipynb``.
- :mod:`tinyllm.grading.cli`: ``tinyllm grade`` (tables, ``--json``, ``--all``).
- :mod:`tinyllm.grading.runner`: grading a notebook or plain source; the learner's code runs in
  :mod:`tinyllm.grading.sandbox`, a separate isolated process that only sees the inputs; both it and the
  notebook's kernel are confined by :mod:`tinyllm.grading.jail`.
- :mod:`tinyllm.grading.core`: the vocabulary of the graded checks in ``checks/NN_topic.py``.
"""
