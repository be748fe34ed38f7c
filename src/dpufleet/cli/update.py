"""`dpufleet update plan`: what updating a DPU to an image would do, before anything runs."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from ..api.kinds import ImageComponent
from ..lifecycle.planner import Unsatisfiable, plan_update
from .common import UserError, options
from .output import plain_table, print_table

update_app = typer.Typer(help="Plan and run component updates.", no_args_is_help=True)


@update_app.command("plan")
def plan_cmd(
    ctx: typer.Context,
    dpu: str = typer.Argument(..., help="the DPU to update"),
    image: str = typer.Option(..., "--image", help="the Image to update it to"),
    project: str | None = typer.Option(None, "-p", "--project", help="project of the DPU and image"),
) -> None:
    """Show the ordered steps (installs, reboots) from the DPU's installed versions to the image's."""
    config = options(ctx).config(project)
    with options(ctx).client() as client:
        target = client.get("dpus", dpu, config.project)
        img = client.get("images", image, config.project)
    installed = {f["id"]: f["version"] for f in (target.get("status") or {}).get("firmware") or [] if f.get("id")}
    if not installed:
        raise UserError(f"dpu {dpu!r} has no firmware inventory yet; wait for discovery to read it")
    try:
        components = [ImageComponent.model_validate(c) for c in img["spec"]["components"]]
    except (KeyError, ValidationError) as exc:
        raise UserError(f"image {image!r}: its components cannot be read: {exc}") from None
    try:
        plan = plan_update(installed, components)
    except Unsatisfiable as exc:
        raise UserError(f"dpu {dpu} cannot be updated to image {image}: {'; '.join(exc.reasons)}") from None
    table = plain_table(["STEP", "ACTION", "COMPONENT", "FROM", "TO", "IMPACT", "WHY"])
    for number, step in enumerate(plan.steps, 1):
        table.add_row(
            str(number),
            step.action.value,
            step.component or "",
            step.from_version or "",
            step.to_version or "",
            step.impact.value,
            step.why,
        )
    print_table(table)
    print(
        f"{len(plan.installs)} install(s), {plan.dpu_reboots} DPU reboot(s), {plan.host_resets} host reset(s)"
        + (f"; unchanged: {', '.join(plan.unchanged)}" if plan.unchanged else "")
    )
