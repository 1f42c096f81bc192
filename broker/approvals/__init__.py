"""Approval requests as stored, and the rules every answer obeys: no kernel needed.

`rules` says which answers a request takes and what an answer grants; `stored` is the request
as a row (its encoded arguments, its public form) and answering one in the store, for front
ends in another OS process (the CLI, the web page). The live queue that files requests and
waits for their answers is `broker.kernel.approvals`.
"""
