"""``pbxfront scripts import-phpus DIR``: a PHPUS tree as pbxfront scripts, hashes kept.

innovaphone's PHP update server (PHPUS, protocol.md §2, §10) reads ``config.xml`` merged with
``config/user-config.xml`` and, for each poll, delivers the files ``scripts/<phase>-<class>-
<env>.txt`` that exist, in this order (its ``getPossibleScripts``):

    for phase in ["all" if more than one phase] + [the device's phase]
      for class in ["all" if more than one class] + [classes whose <model> names the type]
                   + [the type itself, lower case]
        for env in ["all" if more than one environment] + [the device's sn, "-" -> "_"]
                   + [env= of the URL (default: the first environment) and what it implies]

and guards the final phase with the MD5 of the files' trimmed non-empty lines (``script_hash``).
The import writes

    staging.txt, update.txt         the same selection as Jinja2 (staging: the non-final phases,
                                    update: the final one), reading ``vars["phpus-env"]``
    phpus/<phase>-<class>-<env>.txt the scripts, bytes kept, each marked raw (first line
                                    ``{#- pbxfront: raw -#}``, scripts.RAW_MARKER): sent as they
                                    are, no Jinja2, no #(name), so a literal ``{{``, ``{%`` or
                                    ``#(x)`` stays what it was and never breaks a poll
    phpus/inventory-fragment.toml   update variables for what config.xml said (h-poll,
                                    update-allow, update-initial, fw-prot, fw-boot, phpus-env)
    phpus/settings-fragment.toml    pbxfront.toml [update] keys for the rest (grace, fast
                                    polling, firmware-less models, per-model file names)

so a device moved from PHPUS with the same scripts is in sync at its first ``update.txt`` poll.
Everything is read and checked first; with an error nothing is written. Files that are not UTF-8
are read as ``encoding`` (PHPUS trees are often ISO-8859-1) and written as UTF-8, with a warning:
PHPUS hashed the original bytes, so devices that get such a file run their script once more.
"""

from services.update.phpus.base import (
    CONFIG_FILE,
    DEVELOPER_CONFIG_FILE,
    ENVIRONMENT_VARIABLE,
    IMPORT_FOLDER,
    USER_CONFIG_FILE,
    Findings,
    Problem,
)
from services.update.phpus.command import (
    import_command,
    register,
)
from services.update.phpus.config import (
    PhpusConfig,
    merge_config,
    read_config,
    staging_phases,
    update_phases,
)
from services.update.phpus.fragments import (
    inventory_fragment,
    settings_fragment,
)
from services.update.phpus.plan import (
    Output,
    Plan,
    Written,
    conflicts,
    describe,
    plan_import,
    write_plan,
)
from services.update.phpus.sources import (
    Script,
    decode,
    mark_raw,
    read_scripts,
)
from services.update.phpus.templates import (
    jinja_list,
    selection_template,
)

__all__ = [
    "CONFIG_FILE",
    "DEVELOPER_CONFIG_FILE",
    "ENVIRONMENT_VARIABLE",
    "IMPORT_FOLDER",
    "USER_CONFIG_FILE",
    "Findings",
    "Output",
    "PhpusConfig",
    "Plan",
    "Problem",
    "Script",
    "Written",
    "conflicts",
    "decode",
    "describe",
    "import_command",
    "inventory_fragment",
    "jinja_list",
    "mark_raw",
    "merge_config",
    "plan_import",
    "read_config",
    "read_scripts",
    "register",
    "selection_template",
    "settings_fragment",
    "staging_phases",
    "update_phases",
    "write_plan",
]
