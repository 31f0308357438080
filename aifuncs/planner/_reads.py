"""What an AI call's scope reads, and what reads it: the syntax rules the bulk path stands on.

A call may be scored ahead only where streaming would evaluate it on every row its scope reads: these
functions answer that from the sqlglot tree alone (where the call sits, what groups, filters or limits its
rows, whether an outer query could stop early or push a filter below it, whether anything sees its rows'
order). Nothing here asks the engine.
"""

from __future__ import annotations

from sqlglot import exp

from aifuncs.functions import get_spec

# Clauses that may stop a scope before it has read every row: scoring every row would waste calls.
STOPS_EARLY = ("limit", "offset", "fetch")


def is_ai(node: exp.Expr) -> bool:
    """An AI call, or what the planner already put in one's place (a UDF or a prescored column)."""
    for call in node.find_all(exp.Anonymous):
        if call.name.lower().startswith("__aifuncs_") or get_spec(call.name):
            return True
    return any(
        part.lower().startswith("__aifuncs_")
        for column in node.find_all(exp.Column)
        for part in (column.table, column.name)
    )


def conjuncts(where: exp.Expr | None) -> list[exp.Expr]:
    if where is None:
        return []
    condition = where.this if isinstance(where, exp.Where) else where
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def plain_conjuncts(select: exp.Select) -> list[exp.Expr]:
    """The conjuncts of WHERE that hold no AI call: the prescore applies them, so only those rows are scored."""
    return [c for c in conjuncts(select.args.get("where")) if not is_ai(c)]


def in_conjunction(node: exp.And, select: exp.Select) -> bool:
    """An AND that joins the conjuncts of the scope's WHERE (each evaluated on every row that reaches it)."""
    parent = node.parent
    while isinstance(parent, exp.And | exp.Paren):
        parent = parent.parent
    return isinstance(parent, exp.Where) and parent.parent is select


def grouped(select: exp.Select) -> bool:
    if select.args.get("group") or select.args.get("having"):
        return True
    return any(
        not isinstance(agg.parent, exp.Window) and agg.find_ancestor(exp.Select) is select
        for item in select.expressions
        for agg in item.find_all(exp.AggFunc)
    )


def groups_by(select: exp.Select, item: exp.Expr) -> bool:
    """Whether a projection is a grouping key: GROUP BY ALL (and it has no aggregate), its alias, its position."""
    group = select.args.get("group")
    if group is None:
        return False
    if group.args.get("all"):
        return item.find(exp.AggFunc) is None
    position = next(i for i, e in enumerate(select.expressions, start=1) if e is item)
    alias = item.alias.lower() if isinstance(item, exp.Alias) else None
    for key in group.expressions:
        if isinstance(key, exp.Literal) and not key.is_string and key.this == str(position):
            return True
        if alias and isinstance(key, exp.Column) and not key.table and key.name.lower() == alias:
            return True
    return False


def place(call: exp.Expr, select: exp.Select) -> str | None:
    """The clause of `select` that holds the call (expressions, where, group...)."""
    node = call
    while node.parent is not None and node.parent is not select:
        node = node.parent
    return node.arg_key if node.parent is select else None


def group_key_text(select: exp.Select, text: str) -> bool:
    """Whether GROUP BY holds a call written exactly so (not yet replaced by a column)."""
    group = select.args.get("group")
    return group is not None and any(f.sql("duckdb") == text for f in group.find_all(exp.Anonymous))


def ai_names(select: exp.Select) -> set[str]:
    """Output columns of a scope that carry AI answers."""
    return {e.alias_or_name.lower() for e in select.expressions if is_ai(e) and e.alias_or_name}


def mentions(node: exp.Expr, names: set[str]) -> bool:
    return is_ai(node) or any(c.name.lower() in names for c in node.find_all(exp.Column))


def reads_everything(select: exp.Select, names: set[str]) -> bool:
    """A scope with a LIMIT that still reads all its rows first: it aggregates, or sorts by an answer."""
    if grouped(select) or select.args.get("distinct") is not None:
        return True
    order = select.args.get("order")
    if order is None:
        return False
    for ordered in order.expressions:
        key = ordered.this
        if isinstance(key, exp.Literal) and not key.is_string and key.this.isdigit():
            position = int(key.this)
            if 0 < position <= len(select.expressions) and is_ai(select.expressions[position - 1]):
                return True
        elif mentions(key, names):
            return True
    return False


def reads_all_of(outer: exp.Select, names: set[str]) -> bool:
    """An outer scope reads every row of its subquery: no early stop, and each conjunct of its filter needs
    an answer (a filter on other columns alone could be pushed below the call)."""
    if any(outer.args.get(key) for key in STOPS_EARLY) and not reads_everything(outer, names):
        return False
    return all(mentions(c, names) for c in conjuncts(outer.args.get("where")))


def passed_on(outer: exp.Select, names: set[str]) -> set[str]:
    """The outer scope's output columns that carry answers."""
    passed: set[str] = set()
    for item in outer.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
            passed |= names
        elif mentions(item, names) and item.alias_or_name:
            passed.add(item.alias_or_name.lower())
    return passed


def ancestors(node: exp.Expr) -> list[exp.Expr]:
    found = []
    while node.parent is not None:
        node = node.parent
        found.append(node)
    return found


def consumers_read_everything(select: exp.Select, names: set[str]) -> bool:
    """Whether every query that reads this scope's rows reads them all: no LIMIT that could stop it (one
    after an aggregate, or ordered by an answer, reads everything first), no filter on other columns that
    DuckDB could push below the call. `names` are the output columns that carry answers."""
    node: exp.Expr = select
    while True:
        parent = node.parent
        if parent is None:
            return True
        if isinstance(parent, exp.Create | exp.Insert | exp.Schema):
            node = parent
        elif isinstance(parent, exp.SetOperation):
            if any(parent.args.get(key) for key in STOPS_EARLY):
                return False
            node = parent
        elif isinstance(parent, exp.Subquery) and isinstance(parent.parent, exp.From | exp.Join):
            outer = parent.parent.parent
            if not isinstance(outer, exp.Select) or not reads_all_of(outer, names):
                return False
            if grouped(outer):
                return True  # what is above sees groups, each made of every row
            names = passed_on(outer, names)
            node = outer
        elif isinstance(parent, exp.CTE):
            return _cte_read_everywhere(parent, names)
        else:
            return False  # a scalar, IN or EXISTS subquery: evaluated as its outer row needs it


def _cte_read_everywhere(cte: exp.CTE, names: set[str]) -> bool:
    with_ = cte.parent
    if not isinstance(with_, exp.With) or with_.args.get("recursive"):
        return False
    root = cte.root()
    name = cte.alias_or_name.lower()
    readers = [
        table
        for table in root.find_all(exp.Table)
        if table.name.lower() == name and not table.args.get("db") and cte not in ancestors(table)
    ]
    for table in readers:
        outer = table.parent.parent if isinstance(table.parent, exp.From | exp.Join) else None
        if not isinstance(outer, exp.Select) or not reads_all_of(outer, names):
            return False
        if not grouped(outer) and not consumers_read_everything(outer, passed_on(outer, names)):
            return False
    return True


def order_unseen(select: exp.Select) -> bool:
    """Whether nothing can see the order of the scope's rows: it (or what reads it) groups, sorts or
    de-duplicates them. A CTAS or INSERT keeps the order it is given, and so does a plain SELECT."""
    if grouped(select) or select.args.get("order") or select.args.get("distinct"):
        return True
    parent = select.parent
    if isinstance(parent, exp.Union) and parent.args.get("distinct"):
        return True
    if isinstance(parent, exp.Subquery) and isinstance(parent.parent, exp.From | exp.Join):
        outer = parent.parent.parent
        return isinstance(outer, exp.Select) and order_unseen(outer)
    if isinstance(parent, exp.CTE):
        name = parent.alias_or_name.lower()
        readers = [
            t for t in parent.root().find_all(exp.Table) if t.name.lower() == name and not t.args.get("db")
        ]
        outers = [t.parent.parent for t in readers if isinstance(t.parent, exp.From | exp.Join)]
        return (
            bool(readers)
            and len(outers) == len(readers)
            and all(isinstance(o, exp.Select) and order_unseen(o) for o in outers)
        )
    return False


def visible_ctes(select: exp.Select) -> list[exp.CTE]:
    """The CTEs the scope can read, outermost first (a CTE may read those before it), not its own."""
    above = ancestors(select)
    return [
        cte
        for node in reversed([select, *above])
        if (with_ := node.args.get("with_"))
        for cte in with_.expressions
        if cte not in above
    ]
