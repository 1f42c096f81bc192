"""Text for a child script that SIGKILLs itself at a chosen step: `step` counts its calls and
kills the process at call `kill_at` (a name the script defines before it). Given to SQLite's
progress handler, it kills a broker at points spread over a statement's whole run."""

KILL_AT_STEP = """
steps = 0

def step():
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return 0
"""
