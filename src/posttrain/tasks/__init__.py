"""Built-in verifiable tasks generated offline from a seed: SFT, RL (prompt + answer) and eval splits."""
from posttrain.tasks.base import TASKS, Task, get_task, load_task_spec
from posttrain.tasks import arithmetic as _arithmetic  # noqa: F401  (registers)
from posttrain.tasks import countdown as _countdown  # noqa: F401  (registers)
from posttrain.tasks import code as _code  # noqa: F401  (registers)

__all__ = ["TASKS", "Task", "get_task", "load_task_spec"]
