"""References to an AI call's alias in HAVING, QUALIFY and ORDER BY, where DuckDB refuses them.

A streamed AI call is a UDF with side effects (so DuckDB never folds it or runs it twice), and DuckDB's
binder will not let a clause refer to the alias of such an expression (`HAVING p > 2`, `QUALIFY p > 6`,
`ORDER BY p + 1`: "Alias "p" referenced - but the expression has side effects"). The scope is lifted into a
subquery instead: the clauses that name such an alias are applied by an outer query, where the alias is a
plain column. Calls on the bulk path are columns already and need none of this.
"""

from __future__ import annotations

from sqlglot import exp

_LIFTED = "__aifuncs_q"


def lift_alias_references(tree: exp.Expr) -> exp.Expr:
    """Rewrite each SELECT whose HAVING, QUALIFY or ORDER BY names the alias of a streamed AI call."""
    for select in list(tree.find_all(exp.Select)):
        lifted = _lift(select)
        if lifted is not None:
            if select is tree:
                tree = lifted
            else:
                select.replace(lifted)
    return tree


def _streamed(node: exp.Expr) -> bool:
    return any(f.name.lower().startswith("__aifuncs_") for f in node.find_all(exp.Anonymous))


def _names(node: exp.Expr) -> set[str]:
    """The output names a clause reads: `p` of `p` and of `p.result` (a field of the answer struct)."""
    return {(c.table or c.name).lower() for c in node.find_all(exp.Column) if not c.args.get("db")}


def _lift(select: exp.Select) -> exp.Select | None:
    ai_aliases = {
        item.alias.lower() for item in select.expressions if isinstance(item, exp.Alias) and _streamed(item)
    }
    if not ai_aliases:
        return None
    outputs = {item.alias_or_name.lower() for item in select.expressions}
    if any(isinstance(item, exp.Star) for item in select.expressions):
        return None  # the outputs are not known here

    def movable(node: exp.Expr) -> bool:
        """Names an AI alias and can be read from the outputs alone."""
        names = _names(node)
        return bool(names & ai_aliases) and names <= outputs and node.find(exp.AggFunc) is None

    having = select.args.get("having")
    having_parts = _conjuncts(having.this) if having is not None else []
    outer_where = [c for c in having_parts if movable(c)]
    qualify = select.args.get("qualify")
    outer_qualify = qualify if qualify is not None and movable(qualify.this) else None
    order = select.args.get("order")
    # ORDER BY p or ORDER BY 2: DuckDB binds these to the projection itself.
    ordinal_only = order is not None and all(
        isinstance(o.this, exp.Literal) or (isinstance(o.this, exp.Column) and not o.this.table)
        for o in order.expressions
    )
    outer_order = (
        order
        if order is not None
        and any(_names(o) & ai_aliases for o in order.expressions)
        and not ordinal_only
        and all(_names(o) <= outputs for o in order.expressions)
        else None
    )
    if not outer_where and outer_qualify is None and outer_order is None:
        return None
    if order is not None and outer_order is None:
        # Rows lifted into a subquery lose its order: the ORDER BY (and LIMIT) must move out with them.
        if not all(_names(o) <= outputs for o in order.expressions):
            return None  # it sorts by a column the outer query cannot see
        outer_order = order
    inner = select.copy()
    outer = exp.Select(expressions=[exp.Star()]).from_(
        exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(_LIFTED)))
    )
    if outer_where:
        kept = [c for c in having_parts if c not in outer_where]
        inner.set("having", exp.Having(this=exp.and_(*(c.copy() for c in kept))) if kept else None)
        outer.set("where", exp.Where(this=exp.and_(*(c.copy() for c in outer_where))))
    if outer_qualify is not None:
        inner.set("qualify", None)
        outer.set("qualify", outer_qualify.copy())
    if outer_order is not None:
        for key in ("order", "limit", "offset", "fetch"):
            if select.args.get(key) is not None:
                inner.set(key, None)
                outer.set(key, select.args[key].copy())
    with_ = inner.args.get("with_")
    if with_ is not None:  # CTEs stay visible to the whole statement
        inner.set("with_", None)
        outer.set("with_", with_)
    return outer


def _conjuncts(condition: exp.Expr) -> list[exp.Expr]:
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]
