"""What every HTTP app of rerankd shares (server, gateway, alert relay): request ids, body caps, security
headers, the access log, the one error body, and dropping work whose client hung up.

The room knows nothing of reranking or of the gateway's keys: apps plug their own concepts in through hooks.
"""
