"""Recipe: the schema of one conditioning and one image — every field, its vocabulary and its metadata.

Each field says here, once, what it means (help), where it belongs (section), what values it takes
(kind, choices, range) and when it has an effect (`applies`). From this one definition come the CLI
flags and their help, the workbench's Parameters form, recipe TOML files, experiment-type files and
the README's recipe table; a setting with no effect in its combination is refused, from any of them.
Torch-free: the workbench imports it before its first paint. Inputs (references, prompt) are not part
of a Recipe: one recipe applies to many inputs.

A package with a module per job (docs/design.md): vocab (the vocabularies), applies (when a field has an
effect), schema (the fields and the Recipe), rules (per-field and cross-field validation), schedules,
values (text <-> values, seeds), versions (earlier recipe schemas), reading (TOML files), docs (the README
table). Every name is re-exported here: `from vlbench.recipe import X` is the way in.
"""

from __future__ import annotations

from vlbench.recipe.applies import (_alpha_mixes, _alpha_positionwise, _any_alpha_mix, _attend_ratios,  # noqa: F401
                                    _holds_image_rows, _layer_used, _numeric_attend, _single_pass, _uses_vl,
                                    _weighting_applies, above_0, below_1, inside)
from vlbench.recipe.docs import choices_help, markdown_table  # noqa: F401
from vlbench.recipe.reading import load_recipe, read_recipe_file, save_recipe  # noqa: F401
from vlbench.recipe.rules import (_RULES, REFINER_BLOCKS, _rule_per_reference_normalization_needs_image_rows, VL_BLOCKS_EXAMPLE, _check_field, _policy_name,  # noqa: F401
                                  parse_vl_blocks)
from vlbench.recipe.schedules import (ALPHA_SOURCE, SCHEDULE_EXAMPLE, format_schedule, parse_schedule,  # noqa: F401
                                      schedule_alpha)
from vlbench.recipe.schema import (ADDED_AT_3, ADDED_BY_LEVERS, DEFAULTS, OLD_TOML_HEADER, RECIPE_SCHEMA,  # noqa: F401
                                   REMOVED, TOML_HEADER, C, FieldInfo, G, Recipe, X, check_keys, field_default,
                                   field_infos, parse_value)
from vlbench.recipe.values import (SEED_MAX, _float, _is_int, _is_number, _num, _show_default,  # noqa: F401
                                   format_value, parse_seeds, seeds_value)
from vlbench.recipe.versions import changed_meaning, key_dict, upgrade_recipe  # noqa: F401
from vlbench.recipe.vocab import (IMAGE_SELECTIONS, NATURAL, PER_REFERENCE_NORMALIZATIONS, WITH_IMAGE_ROWS, AttendRatio, AttendScope,  # noqa: F401
                                  Choice, Curve, ImageAttention, ImagePositions, MixPolicy, MultiImage, Normalization,
                                  Section, Source, Tokens, VLSystem, VLText)
