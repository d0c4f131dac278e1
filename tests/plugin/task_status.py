"""What QGIS records of how a plugin task ended. On QGIS < 3.26 (no Silent flag) QGIS shows an operating-system
notification "Task failed" for a task that ends Terminated after 5 s or more, so a task the user cancelled
must end Complete there (the plugin says "cancelled" itself); on 3.26+ the Silent flag keeps QGIS quiet."""

from __future__ import annotations


def record(task) -> list[int]:
    """The status of `task` now and those it goes through from now on (the list fills as it runs)."""
    seen: list[int] = [task.status()]
    task.statusChanged.connect(seen.append)
    return seen


def not_reported_as_failed(seen: list[int]) -> bool:
    """Whether a cancelled task's statuses keep QGIS from reporting it as failed."""
    from qgis.core import QgsTask

    if hasattr(QgsTask.Flag, "Silent") or QgsTask.TaskStatus.Running not in seen:
        return True  # QGIS is told by the flag; a task cancelled before it ran is never notified
    return QgsTask.TaskStatus.Terminated not in seen and seen[-1:] == [QgsTask.TaskStatus.Complete]
