"""Django app holding the management commands that drive the engine (``models``, ``benchmark``).

Django imports a command's module only when that command runs, and these modules import the engine
inside ``handle()``, so the web process never loads torch.
"""
