"""One registry helper for everything a user extends: models, datasets, methods, evaluation attacks.

    MODELS = Registry("model")

    @MODELS.register("my_net")
    def my_net(num_classes=10): ...

    MODELS.get("my_net")      # the object; a ValueError listing the valid names + close matches
    MODELS.names()            # sorted names

Names are never silently replaced: registering another object under a taken name is a
ValueError (registering the same object again is a no-op, so a module may be imported twice).
"""
import difflib

__all__ = ["Registry"]


class Registry:
    """Name -> object for one `kind` of extension point ("model", "dataset", "method", "attack").

    Args:
        kind: what the entries are, used in error messages ("unknown model 'x'").
        discover: optional callable run once before the first lookup or listing (e.g. importing
            every module of a package so that their decorators run).
        plural: the plural used in messages (default kind + "s").
    """

    def __init__(self, kind, discover=None, plural=None):
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"Registry needs a non-empty kind (str), got {kind!r}")
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries = {}
        self._discover = discover
        self._discovered = discover is None

    # ---- registration ----------------------------------------------------------------------
    def register(self, name, obj=None):
        """``register(name)(obj)`` (a decorator) or ``register(name, obj)``; returns `obj`.

        Raises TypeError for a name that is not a non-empty str, ValueError for a name already
        taken by another object.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty name (str); got {name!r}")

        def decorator(value):
            current = self._entries.get(name)
            if current is not None and current is not value:
                owner = getattr(current, "__module__", None)
                where = f" (by {owner}.{getattr(current, '__qualname__', type(current).__name__)})" if owner else ""
                raise ValueError(f"{self.kind} name {name!r} is already registered{where}; choose another name")
            self._entries[name] = value
            return value

        return decorator if obj is None else decorator(obj)

    def unregister(self, name):
        """Remove `name` (no error if absent); for tests and interactive sessions."""
        self._entries.pop(name, None)

    # ---- lookup ----------------------------------------------------------------------------
    def _ensure_discovered(self):
        if not self._discovered:
            # set first: a module imported by discovery may itself look names up
            self._discovered = True
            try:
                self._discover()
            except BaseException:
                self._discovered = False
                raise

    def names(self):
        """Sorted names of every entry."""
        self._ensure_discovered()
        return sorted(self._entries)

    def __contains__(self, name):
        self._ensure_discovered()
        return name in self._entries

    def get(self, name):
        """The entry registered as `name`.

        Raises TypeError for a non-str name, ValueError naming the valid names and the closest
        matches for an unknown one.
        """
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str; got {name!r}")
        self._ensure_discovered()
        if name not in self._entries:
            raise ValueError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name):
        """'unknown model 'resnet81' (did you mean 'resnet18'?); valid models: ...'."""
        close = difflib.get_close_matches(name, list(self._entries), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid {self.plural}: {', '.join(sorted(self._entries))}"

    def __repr__(self):
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
