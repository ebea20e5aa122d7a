"""Masking: personal data and secrets hidden from logs, error messages and masked exports.

A :class:`Masker` holds the rules of ``masking`` in the config: named patterns (``email``,
``api_key``, ``card`` with its Luhn check, ``phone``), patterns of your own, and JSON paths per
table whose values are hidden whatever they hold (``tasks: ["data.customer", "result.*.token"]``).

- Logs: :func:`install` puts a filter on every ``agency_data`` logger that masks the formatted
  message (the slow-query log's lines included); one masker serves the process, the last
  connected DataLayer's.
- Errors: an :class:`~agency_data.errors.AgencyDataError`'s text (``str(exc)``, what logs and
  tracebacks show) is masked the same way; ``exc.args`` keeps the original for code that
  inspects it.
- Exports: ``dl.tenant(t).export(...)`` masks each row unless asked not to.

Only text the layer writes is masked; what your own loggers write is yours to filter (the
filter is public: ``logging.getLogger("myapp").addFilter(MaskingFilter(masker))``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agency_data import errors
from agency_data.config import MaskingConfig

__all__ = [
    "BUILTIN_RULES",
    "MaskRule",
    "Masker",
    "MaskingFilter",
    "install",
    "masker_from_config",
    "uninstall",
]


def _luhn(digits: str) -> bool:
    numbers = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(numbers) <= 19:
        return False
    total = 0
    for index, number in enumerate(reversed(numbers)):
        if index % 2 == 1:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


@dataclass(frozen=True)
class MaskRule:
    """A pattern whose matches are replaced; ``check`` (if any) must accept a match first."""

    name: str
    pattern: re.Pattern[str]
    replacement: str
    check: Callable[[str], bool] | None = None

    def apply(self, text: str) -> str:
        """``text`` with this rule's matches replaced."""
        if self.check is None:
            return self.pattern.sub(self.replacement, text)
        check = self.check
        return self.pattern.sub(
            lambda m: self.replacement if check(m.group(0)) else m.group(0), text
        )


BUILTIN_RULES: dict[str, MaskRule] = {
    rule.name: rule
    for rule in (
        MaskRule(
            "email",
            re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            "[email]",
        ),
        MaskRule(
            "api_key",
            re.compile(
                r"\b(?:"
                r"sk-[A-Za-z0-9_-]{20,}"  # OpenAI-style secret keys
                r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
                r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
                r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
                r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
                r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
                r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
                r")"
                r"|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*"
            ),
            "[api_key]",
        ),
        MaskRule(
            "card",
            # Card numbers start with 3-6 (so does no millisecond timestamp of this century),
            # whole or in groups of four; the Luhn check then drops most other digit runs.
            re.compile(r"\b[3-6]\d{12,18}\b|\b[3-6]\d{3}(?:[ -]\d{4}){2}[ -]\d{1,7}\b"),
            "[card]",
            check=_luhn,
        ),
        MaskRule(
            "phone",
            # A country code never starts with 0 (what follows a time's +hh:mm offset does).
            re.compile(
                r"(?<![\w+:.])\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}"
                r"(?:[ .-]?\d{2,4}){1,5}"
            ),
            "[phone]",
        ),
    )
}

_HIDDEN = "[masked]"


class Masker:
    """Applies the mask rules to text and to JSON values, and the JSON paths to rows."""

    def __init__(
        self,
        rules: Sequence[MaskRule],
        paths: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.rules = tuple(rules)
        # Per table (or collection): the paths, split at their dots.
        self.paths = {
            table: [tuple(path.split(".")) for path in table_paths]
            for table, table_paths in (paths or {}).items()
        }

    def text(self, text: str) -> str:
        """``text`` with every rule's matches replaced."""
        for rule in self.rules:
            text = rule.apply(text)
        return text

    def value(self, value: Any) -> Any:
        """A JSON value with every string in it masked (keys stay)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value

    def row(self, table: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row of ``table``: the values under its JSON paths hidden, then every string masked."""
        masked = dict(row)
        for path in self.paths.get(table, ()):
            masked = _hide(masked, path)
        return {key: self.value(item) for key, item in masked.items()}


def _hide(value: Any, path: tuple[str, ...]) -> Any:
    # A copy of value with what path names replaced; "*" stands for any key or list item.
    if not path:
        return _HIDDEN
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        keys: Iterable[str] = value if head == "*" else [head] if head in value else []
        hidden = dict(value)
        for key in keys:
            hidden[key] = _hide(value[key], rest)
        return hidden
    if isinstance(value, list) and (head == "*" or head.isdigit()):
        return [
            _hide(item, rest) if head == "*" or index == int(head) else item
            for index, item in enumerate(value)
        ]
    return value


def masker_from_config(config: MaskingConfig) -> Masker:
    """The masker ``masking`` describes."""
    rules = [
        BUILTIN_RULES[rule]
        if isinstance(rule, str)
        else MaskRule(rule.name, re.compile(rule.pattern), rule.replacement)
        for rule in config.rules
    ]
    return Masker(rules, config.paths)


class MaskingFilter(logging.Filter):
    """Masks each record's message (formatted with its arguments first)."""

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place (its message, traceback and stack); never drops it."""
        message = record.getMessage()
        masked = self.masker.text(message)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatted here, as a handler's formatter would, so that it can be masked: a
            # formatter uses exc_text when it is set.
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.masker.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.masker.text(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


class _ProcessFilter(logging.Filter):
    # The one filter on the layer's loggers, masking with whichever masker is installed.
    installed: MaskingFilter | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        installed = self.installed
        return True if installed is None else installed.filter(record)


_FILTER = _ProcessFilter()


def install(masker: Masker, *, logs: bool = True, errors_too: bool = True) -> None:
    """Mask the layer's log records and error messages with ``masker`` (process-wide)."""
    if logs:
        _FILTER.installed = MaskingFilter(masker)
        for logger in _layer_loggers():
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
    if errors_too:
        errors.set_message_mask(masker.text)


def uninstall(masker: Masker) -> None:
    """Stop masking with ``masker`` if it is the one installed (a later one stays)."""
    if _FILTER.installed is not None and _FILTER.installed.masker is masker:
        _FILTER.installed = None
    errors.clear_message_mask(masker.text)


def _layer_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    names = ["agency_data", *(n for n in manager.loggerDict if n.startswith("agency_data."))]
    return [logging.getLogger(name) for name in names]
