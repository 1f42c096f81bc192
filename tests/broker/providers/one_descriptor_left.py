"""A script for a child interpreter that runs `first` with one file descriptor left (the
rest held open under a low RLIMIT_NOFILE), then `after` once they are all back, and prints
both as JSON: "out of descriptors for a moment" must never be remembered as a "no"."""


def one_descriptor_left(imports: str, first: str, after: str) -> str:
    """The script: `imports` (lines), `first` (an expression, run short of descriptors),
    `after` (the text of a JSON-able dict's items, run once they are back)."""
    return f"""
import json, os, resource
{imports}
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
os.close(held.pop())  # one left: the first open takes it, and what needs a second finds none
first = {first}
for fd in held:
    os.close(fd)
print(json.dumps({{"first": first, {after}}}))
"""
