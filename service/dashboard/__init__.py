"""``/dashboard``: the live operations page (readiness, queue, workers, cron, failures, limits, Redis).

``snapshot`` builds the JSON document the page polls and ``schemas`` documents it; ``page``
renders the HTML (``templates/``: the page shell and the login form) with its security
headers; ``static/`` holds the page's one script and style sheet. The routes are in
``service/api/dashboard.py``; who may see the page is ``service.operators``'s to say.
"""
