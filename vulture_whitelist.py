"""Names vulture cannot see being used: frameworks call them, templates read them, or the
tests and benchmarks read them as part of a result. ``make lint`` runs vulture over
``src/`` with this file; anything else it reports is dead and goes.

Functions registered with a decorator are left out in ``pyproject.toml`` (``[tool.vulture]``
``ignore_decorators``) rather than listed here, so a new route or command needs no entry:
Typer commands (``@app.command``), FastAPI routes and exception handlers (``@router.get``,
``@app.exception_handler``), pydantic validators, SQLAlchemy event listeners. Alembic's
revision variables and functions are left out by ``ignore_names``.

An entry is ``_.name`` for an attribute or method, a bare name for anything else (vulture
only parses this file; nothing imports or runs it). Keep each group's comment true when
you add to it.
"""

# Enum members reached by value, never by name: a Typer choice (``--role manager``) and the
# problem categories read from forms, the API and spreadsheets.
manager
office
SANITATION
REPAIR
PEST
ORDER

# pydantic and pydantic-settings read these class attributes and call this hook by name,
# with these keyword arguments.
model_config
_.settings_customise_sources
dotenv_settings
file_secret_settings

# SQLAlchemy: a TypeDecorator's parts, the declarative base's type map, and columns that are
# written (inserts, migrations, the audit trail) but never read back through the ORM.
impl
cache_ok
type_annotation_map
_.process_bind_param
_.process_result_value
loaded_at
done_at
assigned_at
ended_why
uploaded_at
session_epoch
first_used_at

# Starlette and uvicorn read these attributes of objects they own.
_.lifespan_context
_.should_exit
_.send_with_limit  # web/security._Responder overrides Starlette's body limiter's
_.response_started  # ... and sets the flag that limiter reads

# openpyxl: workbook properties, print and chart settings are attributes it reads when
# saving; ``_values_to_row`` overrides its streaming writer's method.
_.creator
_.lastModifiedBy
_.freeze_panes
_.pageSetUpPr
_.orientation
_.paperSize
_.scale
_.print_area
_.txPr
_.page_margins
_.gridLines
_.print_title_rows
_.data_type
_.legend
_.height
_.majorGridlines
_._values_to_row

# Jinja2 templates call these (today.html, obligation.html, office.html).
_.long_date
_.range_text
_.today_settled

# Jinja2 templates read these (inspection.html, inspect_form.html, _inspections_panel.html).
_.template_name
_.last_day

# Read by the tests and the benchmarks: the parts of a step's result that say what it did,
# and the per-table checksums that prove two databases hold the same rows.
chunks
cancelled
pest_control
_.chunks
_.cancelled
sums
pdf_id

# Fields of the API's pydantic response models: FastAPI serialises them to JSON, so a field
# only ever set by keyword looks unused (a published JSON field: never delete one for this).
counted_at

# WeasyPrint's hook for the user-agent stylesheet: WeasyPrint calls it on the bulletin's
# page class (reports/bulletin.page_class)
_ua_stylesheets
