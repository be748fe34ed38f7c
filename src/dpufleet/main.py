"""The `dpufleet` console script: the HTTP commands of cli/ plus the local ones of commands/.

cli/ talks to a server over HTTP only; the commands that run the server, the controllers, the
agent, the emulated fleet, the demo or a benchmark are added here, at the top of the import
layers, so that nothing below depends on them (the import contract in pyproject.toml).
"""

from __future__ import annotations

from .cli.main import app
from .commands import policy, processes
from .commands.bench import bench_app
from .commands.sim import sim_app

app.command("server")(processes.server_cmd)
app.command("controller")(processes.controller_cmd)
app.command("demo")(processes.demo_cmd)
app.command("agent")(processes.agent_cmd)
app.add_typer(sim_app, name="sim")
app.add_typer(bench_app, name="bench")
app.command("policy")(policy.policy)

__all__ = ["app"]

if __name__ == "__main__":
    app()
