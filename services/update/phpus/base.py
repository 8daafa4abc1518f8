"""What every step of the PHPUS import shares: the file names of a PHPUS tree, the import's
folder and environment variable, and the findings (errors and warnings, each naming its file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIG_FILE = "config.xml"


USER_CONFIG_FILE = "config/user-config.xml"


# PHPUS prefers this one to user-config.xml when it exists (readConfig).
DEVELOPER_CONFIG_FILE = "config/user-config-dvl.xml"


IMPORT_FOLDER = "phpus"


ENVIRONMENT_VARIABLE = "phpus-env"


@dataclass(frozen=True)
class Problem:
    """One finding, ``path:line: severity: message`` (line 0: the whole file)."""

    severity: str  # error | warning
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)

    def error(self, path: Path | str, message: str, line: int = 0) -> None:
        self.problems.append(Problem("error", str(path), line, message))

    def warning(self, path: Path | str, message: str, line: int = 0) -> None:
        self.problems.append(Problem("warning", str(path), line, message))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]
