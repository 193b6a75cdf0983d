"""modules/progress.py: the task bookkeeping behind POST /internal/progress."""

import time
from collections import OrderedDict

current_task = None
pending_tasks = OrderedDict()
finished_tasks = []
recorded_results = []


def start_task(id_task):
    global current_task
    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task):
    global current_task
    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)
    del finished_tasks[:-16]


def record_results(id_task, res):
    recorded_results.append((id_task, res))
    del recorded_results[:-2]


def add_task_to_queue(id_job):
    pending_tasks[id_job] = time.time()
