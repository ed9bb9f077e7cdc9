"""Stand-in for modules/api/models.py @ A1111 v1.10.1 (82a973c): ScriptArg / ScriptInfo / ScriptsList only.

Upstream also generates the txt2img/img2img request models from the processing classes;
tests use `SimpleRequest` in modules/api/api.py instead.
"""

from typing import Any

from pydantic import BaseModel, Field


# mirrors modules/api/models.py @ v1.10.1 (82a973c): ScriptsList
class ScriptsList(BaseModel):
    txt2img: list = Field(default=None, title="Txt2img", description="Titles of scripts (txt2img)")
    img2img: list = Field(default=None, title="Img2img", description="Titles of scripts (img2img)")


# mirrors modules/api/models.py @ v1.10.1 (82a973c): ScriptArg
class ScriptArg(BaseModel):
    label: str = Field(default=None, title="Label", description="Name of the argument in UI")
    value: Any | None = Field(default=None, title="Value", description="Default value of the argument")
    minimum: Any | None = Field(
        default=None, title="Minimum", description="Minimum allowed value for the argumentin UI"
    )
    maximum: Any | None = Field(
        default=None, title="Minimum", description="Maximum allowed value for the argumentin UI"
    )
    step: Any | None = Field(default=None, title="Minimum", description="Step for changing value of the argumentin UI")
    choices: list[str] | None = Field(default=None, title="Choices", description="Possible values for the argument")


# mirrors modules/api/models.py @ v1.10.1 (82a973c): ScriptInfo
class ScriptInfo(BaseModel):
    name: str = Field(default=None, title="Name", description="Script name")
    is_alwayson: bool = Field(
        default=None, title="IsAlwayson", description="Flag specifying whether this script is an alwayson script"
    )
    is_img2img: bool = Field(
        default=None, title="IsImg2img", description="Flag specifying whether this script is an img2img script"
    )
    args: list[ScriptArg] = Field(title="Arguments", description="List of script's arguments")
