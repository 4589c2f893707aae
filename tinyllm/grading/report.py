"""What grading a notebook produces: a :class:`Report` of :class:`ExerciseResult` of :class:`TestResult`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

@dataclass
class TestResult:
    name: str
    points: float
    max_points: float
    passed: bool
    feedback: str = ""


@dataclass
class ExerciseResult:
    function: str
    title: str
    score: float
    max_score: float
    tests: list[TestResult] = field(default_factory=list)
    message: str = ""            # one reason for the whole exercise (syntax error, missing, time limit...)

    @property
    def passed(self) -> bool:
        return self.score >= self.max_score


@dataclass
class Report:
    notebook: str
    lesson: str | None
    score: float = 0.0
    max_score: float = 0.0
    exercises: list[ExerciseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None     # the notebook could not be graded at all (unknown lesson, unreadable file)

    @property
    def full_marks(self) -> bool:
        return self.error is None and self.max_score > 0 and self.score >= self.max_score

    def to_dict(self) -> dict:
        d = asdict(self)
        d["full_marks"] = self.full_marks
        return d
