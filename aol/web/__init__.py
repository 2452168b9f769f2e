"""The operator's web dashboard: a thin shell over the store (`aol dashboard`).

`app.py` routes, `auth.py` decides who may look and act, `views.py` reads the page model,
`controls.py` applies an operator's change through the same store functions as the CLI,
`artifacts.py` serves proof artifacts safely, `charts.py` draws the tick charts, and
`server.py` runs it all under uvicorn. Nothing in aol imports this package.
"""
