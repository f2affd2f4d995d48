#!/usr/bin/env python3
"""Superset provisioning for campaign-pipeline, run by scripts/superset.sh with the Superset venv's python.

  provision [--out FILE] [--lookback-hours N]
                             database "Campaign pipeline" (CAMPAIGN_SQL_URI), one virtual dataset over
                             campaigns.campaign_metrics, ten charts and the dashboard "Campaign performance"
                             (slug campaign-performance) with a native filter on campaign_id; idempotent
                             (everything is found by name, or the dashboard by slug, and updated)
  chart-data NAME_OR_ID      the chart's data from /api/v1/chart/{id}/data/ (its saved query_context) as JSON
             [--rows]        only the rows of the first query
             [--cached]      allow Superset's cache (default: force=true, the rows come from the endpoint)
             [--type query]  the generated SQL instead of the rows
  screenshot [--out PNG] [--campaign ID]...
                             log in through /login/, open the dashboard in headless Chromium (selenium,
                             a Superset dependency, with Debian's chromium + chromedriver), wait for every
                             chart, optionally apply the campaign filter, save a PNG, print what it shows
  admin                      create or update the admin user from SUPERSET_ADMIN_USER / SUPERSET_ADMIN_PASSWORD
                             (needs SUPERSET_CONFIG_PATH; run by `superset.sh start`)

Only plain SELECTs are sent to the SQL endpoint by what this file sets up: the dataset is virtual (its
SQL is given, its columns and types are declared here, never read from the endpoint's catalog) and the
metrics are SQL aggregates over the rows, so a percentage is computed from sums, never averaged.

Environment: SUPERSET_URL (default http://127.0.0.1:8088), SUPERSET_ADMIN_USER, SUPERSET_ADMIN_PASSWORD,
CAMPAIGN_SQL_URI (provision), CAMPAIGN_SQL_SCHEMA (default campaigns), SUPERSET_HOME (default out folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DATABASE_NAME = "Campaign pipeline"
DATASET_NAME = "campaign_metrics_virtual"
DASHBOARD_TITLE = "Campaign performance"
DASHBOARD_SLUG = "campaign-performance"
TIME_GRAIN = "PT1M"  # one minute, the pipeline's window
TIME_COL = "window_start"
NATIVE_FILTER_ID = "NATIVE_FILTER-campaign-id"
TIMESERIES_ROW_LIMIT = 50000  # 10 campaigns x 5,000 one-minute windows (ROW_LIMIT in superset_config.py)

# The dataset's columns, declared (the endpoint's catalog is never asked).
COLUMNS = [
    # name, type, is_dttm, verbose name
    ("campaign_id", "VARCHAR", False, "Campaign"),
    ("window_start", "TIMESTAMP WITH TIME ZONE", True, "Window start"),
    ("impressions", "BIGINT", False, "Impressions"),
    ("clicks", "BIGINT", False, "Clicks"),
    ("conversions", "BIGINT", False, "Conversions"),
    ("revenue", "DOUBLE PRECISION", False, "Revenue"),
]

# The dataset's metrics: aggregates over the rows. Percentages are ratios of sums.
METRICS = [
    # name, verbose name, SQL expression, d3 format
    ("total_impressions", "Impressions", "SUM(impressions)", ",d"),
    ("total_clicks", "Clicks", "SUM(clicks)", ",d"),
    ("total_conversions", "Conversions", "SUM(conversions)", ",d"),
    ("total_revenue", "Revenue", "SUM(revenue)", ",.2f"),
    ("ctr_pct", "CTR %", "100.0 * SUM(clicks) / NULLIF(SUM(impressions), 0)", ",.2f"),
    ("cvr_pct", "CVR %", "100.0 * SUM(conversions) / NULLIF(SUM(clicks), 0)", ",.2f"),
]

# The charts: (name, kind, metric). kind: line = per campaign over time, bar = top campaigns, big = total.
CHARTS = [
    ("Impressions", "big", "total_impressions"),
    ("Clicks", "big", "total_clicks"),
    ("Conversions", "big", "total_conversions"),
    ("Revenue", "big", "total_revenue"),
    ("CTR %", "big", "ctr_pct"),
    ("CVR %", "big", "cvr_pct"),
    ("CTR % per campaign", "line", "ctr_pct"),
    ("CVR % per campaign", "line", "cvr_pct"),
    ("Revenue per campaign", "line", "total_revenue"),
    ("Top campaigns by revenue", "bar", "total_revenue"),
]

# Dashboard rows: (height in grid units of 8 px, [(chart name, width of 12)]).
LAYOUT = [
    (20, [(name, 2) for name, kind, _ in CHARTS if kind == "big"]),
    (60, [("CTR % per campaign", 6), ("CVR % per campaign", 6)]),
    (60, [("Revenue per campaign", 7), ("Top campaigns by revenue", 5)]),
]


def dataset_sql(schema: str) -> str:
    cols = ", ".join(name for name, *_ in COLUMNS)
    return f"SELECT {cols} FROM {schema}.campaign_metrics"


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name) or default
    if not value:
        sys.exit(f"superset_provision.py: {name} is not set")
    return value


# ---------------------------------------------------------------- REST client


class ApiError(RuntimeError):
    pass


class Superset:
    """The REST API with a logged-in session: JWT from /api/v1/security/login, CSRF token with the session cookie."""

    def __init__(self, base_url: str, user: str, password: str):
        import requests

        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        r = self.http.post(
            f"{self.base}/api/v1/security/login",
            json={"username": user, "password": password, "provider": "db", "refresh": False},
            timeout=60,
        )
        if r.status_code != 200:
            raise ApiError(f"login as {user!r} at {self.base} failed: HTTP {r.status_code} {r.text[:300]}")
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        r = self.http.get(f"{self.base}/api/v1/security/csrf_token/", timeout=60)
        if r.status_code != 200:
            raise ApiError(f"CSRF token: HTTP {r.status_code} {r.text[:300]}")
        self.http.headers["X-CSRFToken"] = r.json()["result"]
        self.http.headers["Referer"] = self.base + "/"

    def call(self, method: str, path: str, ok=(200, 201), **kw):
        r = self.http.request(method, f"{self.base}{path}", timeout=300, **kw)
        if r.status_code not in ok:
            raise ApiError(f"{method} {path}: HTTP {r.status_code} {r.text[:2000]}")
        return r.json() if r.content else {}

    def find(self, resource: str, column: str, value: str) -> list[dict]:
        """Objects whose `column` equals `value` exactly (searched with `ct`, compared here)."""
        import prison

        q = prison.dumps({"filters": [{"col": column, "opr": "ct", "value": value}], "page_size": 100})
        rows = self.call("GET", f"/api/v1/{resource}/", params={"q": q})["result"]
        return [row for row in rows if row.get(column) == value]

    def me(self) -> int:
        return self.call("GET", "/api/v1/me/")["result"]["id"]


# ---------------------------------------------------------------- provisioning


def ensure_database(api: Superset, uri: str) -> int:
    payload = {
        "database_name": DATABASE_NAME,
        "sqlalchemy_uri": uri,
        "expose_in_sqllab": True,
        "allow_run_async": False,
        "allow_dml": False,
        "allow_ctas": False,
        "allow_cvas": False,
        "allow_file_upload": False,
        "impersonate_user": False,
        "extra": json.dumps(
            {
                "allows_virtual_table_explore": True,
                "metadata_params": {},
                # no hstore probe (a pg_type/pg_namespace join) on every new connection; the
                # connections show up as "superset" in the endpoint's logs
                "engine_params": {
                    "use_native_hstore": False,
                    "connect_args": {"application_name": "superset"},
                },
                "schemas_allowed_for_file_upload": [],
            }
        ),
    }
    found = api.find("database", "database_name", DATABASE_NAME)
    if found:
        db_id = found[0]["id"]
        api.call("PUT", f"/api/v1/database/{db_id}", json=payload)
        print(f"database {DATABASE_NAME!r}: updated (id {db_id})", file=sys.stderr)
    else:
        db_id = api.call("POST", "/api/v1/database/", json=payload)["id"]
        print(f"database {DATABASE_NAME!r}: created (id {db_id})", file=sys.stderr)
    return db_id


def ensure_dataset(api: Superset, db_id: int, schema: str, owner: int) -> int:
    sql = dataset_sql(schema)
    found = [d for d in api.find("dataset", "table_name", DATASET_NAME) if d["database"]["id"] == db_id]
    if found:
        ds_id = found[0]["id"]
        print(f"dataset {DATASET_NAME!r}: updating (id {ds_id})", file=sys.stderr)
    else:
        ds_id = api.call(
            "POST",
            "/api/v1/dataset/",
            json={"database": db_id, "table_name": DATASET_NAME, "sql": sql, "owners": [owner]},
        )["id"]
        print(f"dataset {DATASET_NAME!r}: created (id {ds_id})", file=sys.stderr)
    current = api.call("GET", f"/api/v1/dataset/{ds_id}")["result"]
    metric_ids = {m["metric_name"]: m["id"] for m in current.get("metrics", [])}
    metrics = []
    for name, verbose, expression, d3format in METRICS:
        m = {
            "metric_name": name,
            "verbose_name": verbose,
            "expression": expression,
            "metric_type": None,
            "d3format": d3format,
        }
        if name in metric_ids:
            m["id"] = metric_ids[name]
        metrics.append(m)
    columns = [
        {
            "column_name": name,
            "type": type_,
            "is_dttm": is_dttm,
            "verbose_name": verbose,
            "groupby": True,
            "filterable": True,
            "is_active": True,
        }
        for name, type_, is_dttm, verbose in COLUMNS
    ]
    api.call(
        "PUT",
        f"/api/v1/dataset/{ds_id}",
        params={"override_columns": "true"},
        json={
            "sql": sql,
            "description": "campaign_metrics: one row per campaign and one-minute window",
            "main_dttm_col": TIME_COL,
            "filter_select_enabled": True,
            "normalize_columns": False,
            "always_filter_main_dttm": False,
            "columns": columns,
            "metrics": metrics,
            "owners": [owner],
        },
    )
    return ds_id


def lookback_where(hours: int) -> str:
    """The time series' optional window: plain SQL (NOW() and an interval literal), no TO_TIMESTAMP."""
    return f"{TIME_COL} >= NOW() - INTERVAL '{int(hours)} hours'"


def time_range_filter() -> dict:
    return {"clause": "WHERE", "comparator": "No filter", "expressionType": "SIMPLE", "operator": "TEMPORAL_RANGE", "subject": TIME_COL}


def chart_definition(kind: str, metric: str, ds_id: int, lookback_hours: int = 0) -> tuple[str, dict, dict]:
    """(viz_type, form_data, the query object saved in query_context).

    The saved query returns long rows (one per time/campaign) without the front end's post-processing
    (pivot), so /api/v1/chart/{id}/data/ answers rows that tests can compare with SQL on the tables.
    The dashboard's front end builds its own query from form_data: same metrics, grouping and filters."""
    base_form = {
        "datasource": f"{ds_id}__table",
        "adhoc_filters": [time_range_filter()],
        "extra_form_data": {},
        "dashboards": [],
    }
    base_query = {
        "filters": [{"col": TIME_COL, "op": "TEMPORAL_RANGE", "val": "No filter"}],
        "extras": {"having": "", "where": ""},
        "applied_time_extras": {},
        "columns": [],
        "metrics": [metric],
        "orderby": [],
        "annotation_layers": [],
        "series_limit": 0,
        "order_desc": True,
        "url_params": {},
        "custom_params": {},
        "custom_form_data": {},
        "time_offsets": [],
        "post_processing": [],
    }
    if kind == "big":
        form = {
            **base_form,
            "viz_type": "big_number_total",
            "metric": metric,
            "header_font_size": 0.4,
            "subheader_font_size": 0.15,
            "y_axis_format": dict((m[0], m[3]) for m in METRICS)[metric],
            "time_format": "smart_date",
        }
        return "big_number_total", form, {**base_query, "row_limit": 1}
    if kind == "line":
        form = {
            **base_form,
            "viz_type": "echarts_timeseries_line",
            "x_axis": TIME_COL,
            "time_grain_sqla": TIME_GRAIN,
            "metrics": [metric],
            "groupby": ["campaign_id"],
            "row_limit": TIMESERIES_ROW_LIMIT,
            "order_desc": True,
            "truncate_metric": True,
            "show_empty_columns": True,
            "comparison_type": "values",
            "annotation_layers": [],
            "forecastPeriods": 10,
            "forecastInterval": 0.8,
            "x_axis_title_margin": 15,
            "y_axis_title_margin": 15,
            "y_axis_title_position": "Left",
            "sort_series_type": "sum",
            "color_scheme": "supersetColors",
            "seriesType": "line",
            "only_total": True,
            "opacity": 0.2,
            "markerSize": 6,
            "show_legend": True,
            "legendType": "scroll",
            "legendOrientation": "top",
            "x_axis_time_format": "smart_date",
            "rich_tooltip": True,
            "tooltipTimeFormat": "smart_date",
            "y_axis_format": ",.2f",
            "y_axis_bounds": [None, None],
            "truncateXAxis": True,
            "zoomable": True,
            "x_axis_sort_asc": True,
            "x_axis_sort_series": "name",
            "x_axis_sort_series_ascending": True,
        }
        query = {
            **base_query,
            "columns": [
                {
                    "timeGrain": TIME_GRAIN,
                    "columnType": "BASE_AXIS",
                    "sqlExpression": TIME_COL,
                    "label": TIME_COL,
                    "expressionType": "SQL",
                },
                "campaign_id",
            ],
            "series_columns": ["campaign_id"],
            "extras": {"having": "", "where": "", "time_grain_sqla": TIME_GRAIN},
            "row_limit": TIMESERIES_ROW_LIMIT,
            # as the dashboard's front end asks: the rows past the limit are the smallest values
            "orderby": [[metric, False]],
        }
        if lookback_hours:
            where = lookback_where(lookback_hours)
            form["adhoc_filters"].append({"expressionType": "SQL", "clause": "WHERE", "sqlExpression": where})
            query["extras"]["where"] = f"({where})"
        return "echarts_timeseries_line", form, query
    if kind == "bar":
        form = {
            **base_form,
            "viz_type": "echarts_timeseries_bar",
            "x_axis": "campaign_id",
            "x_axis_sort": metric,
            "x_axis_sort_asc": False,
            "metrics": [metric],
            "groupby": [],
            "row_limit": 10,
            "order_desc": True,
            "orientation": "vertical",
            "show_legend": False,
            "show_value": True,
            "color_scheme": "supersetColors",
            "y_axis_format": ",.2f",
            "truncate_metric": True,
            "comparison_type": "values",
            "annotation_layers": [],
            "x_axis_title_margin": 15,
            "y_axis_title_margin": 15,
            "y_axis_title_position": "Left",
            "rich_tooltip": True,
            "only_total": True,
            "y_axis_bounds": [None, None],
        }
        query = {**base_query, "columns": ["campaign_id"], "orderby": [[metric, False]], "row_limit": 10}
        return "echarts_timeseries_bar", form, query
    raise ValueError(kind)


def ensure_dashboard(api: Superset, owner: int) -> int:
    r = api.http.get(f"{api.base}/api/v1/dashboard/{DASHBOARD_SLUG}", timeout=60)
    if r.status_code == 200:
        dash_id = r.json()["result"]["id"]
        print(f"dashboard {DASHBOARD_SLUG!r}: updating (id {dash_id})", file=sys.stderr)
        return dash_id
    if r.status_code != 404:
        raise ApiError(f"GET dashboard {DASHBOARD_SLUG}: HTTP {r.status_code} {r.text[:300]}")
    dash_id = api.call(
        "POST",
        "/api/v1/dashboard/",
        json={"dashboard_title": DASHBOARD_TITLE, "slug": DASHBOARD_SLUG, "owners": [owner], "published": True},
    )["id"]
    print(f"dashboard {DASHBOARD_SLUG!r}: created (id {dash_id})", file=sys.stderr)
    return dash_id


def ensure_chart(
    api: Superset, name: str, kind: str, metric: str, ds_id: int, dash_id: int, owner: int, lookback_hours: int
) -> int:
    viz_type, form, query = chart_definition(kind, metric, ds_id, lookback_hours)
    form["slice_name"] = name
    form["dashboards"] = [dash_id]
    query_context = {
        "datasource": {"id": ds_id, "type": "table"},
        "force": False,
        "queries": [query],
        "form_data": form,
        "result_format": "json",
        "result_type": "full",
    }
    payload = {
        "slice_name": name,
        "viz_type": viz_type,
        "datasource_id": ds_id,
        "datasource_type": "table",
        "params": json.dumps(form),
        "query_context": json.dumps(query_context),
        "query_context_generation": False,
        "dashboards": [dash_id],
        "owners": [owner],
    }
    found = api.find("chart", "slice_name", name)
    if found:
        chart_id = found[0]["id"]
        api.call("PUT", f"/api/v1/chart/{chart_id}", json=payload)
    else:
        chart_id = api.call("POST", "/api/v1/chart/", json=payload)["id"]
    return chart_id


def layout(chart_ids: dict[str, int]) -> dict:
    pos: dict = {
        "DASHBOARD_VERSION_KEY": "v2",
        "ROOT_ID": {"type": "ROOT", "id": "ROOT_ID", "children": ["GRID_ID"]},
        "GRID_ID": {"type": "GRID", "id": "GRID_ID", "children": [], "parents": ["ROOT_ID"]},
        "HEADER_ID": {"type": "HEADER", "id": "HEADER_ID", "meta": {"text": DASHBOARD_TITLE}},
    }
    for i, (height, cells) in enumerate(LAYOUT, 1):
        row = f"ROW-{i}"
        pos["GRID_ID"]["children"].append(row)
        pos[row] = {
            "type": "ROW",
            "id": row,
            "children": [],
            "parents": ["ROOT_ID", "GRID_ID"],
            "meta": {"background": "BACKGROUND_TRANSPARENT"},
        }
        for name, width in cells:
            cid = chart_ids[name]
            key = f"CHART-{cid}"
            pos[row]["children"].append(key)
            pos[key] = {
                "type": "CHART",
                "id": key,
                "children": [],
                "parents": ["ROOT_ID", "GRID_ID", row],
                "meta": {"chartId": cid, "sliceName": name, "width": width, "height": height},
            }
    return pos


def native_filters(ds_id: int, chart_ids: list[int]) -> list[dict]:
    return [
        {
            "id": NATIVE_FILTER_ID,
            "name": "Campaign",
            "type": "NATIVE_FILTER",
            "filterType": "filter_select",
            "description": "campaign_id, applies to every chart",
            "targets": [{"datasetId": ds_id, "column": {"name": "campaign_id"}}],
            "controlValues": {
                "enableEmptyFilter": False,
                "defaultToFirstItem": False,
                "multiSelect": True,
                "searchAllOptions": False,
                "inverseSelection": False,
            },
            "defaultDataMask": {"extraFormData": {}, "filterState": {}, "ownState": {}},
            "cascadeParentIds": [],
            "scope": {"rootPath": ["ROOT_ID"], "excluded": []},
            "chartsInScope": chart_ids,
            "tabsInScope": [],
        }
    ]


def provision(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    base = env("SUPERSET_URL", "http://127.0.0.1:8088")
    api = Superset(base, env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD"))
    owner = api.me()
    db_id = ensure_database(api, env("CAMPAIGN_SQL_URI"))
    ds_id = ensure_dataset(api, db_id, args.schema, owner)
    dash_id = ensure_dashboard(api, owner)
    chart_ids = {}
    for name, kind, metric in CHARTS:
        chart_ids[name] = ensure_chart(api, name, kind, metric, ds_id, dash_id, owner, args.lookback_hours)
        print(f"chart {name!r}: id {chart_ids[name]}", file=sys.stderr)
    positions = layout(chart_ids)
    ids = list(chart_ids.values())
    metadata = {
        "native_filter_configuration": native_filters(ds_id, ids),
        "chart_configuration": {},
        "global_chart_configuration": {"scope": {"rootPath": ["ROOT_ID"], "excluded": []}, "chartsInScope": ids},
        "cross_filters_enabled": False,
        "refresh_frequency": 0,
        "timed_refresh_immune_slices": [],
        "expanded_slices": {},
        "color_scheme": "",
        "label_colors": {},
        "shared_label_colors": [],
        "map_label_colors": {},
        "color_scheme_domain": [],
        "default_filters": "{}",
        "positions": positions,
    }
    api.call(
        "PUT",
        f"/api/v1/dashboard/{dash_id}",
        json={
            "dashboard_title": DASHBOARD_TITLE,
            "slug": DASHBOARD_SLUG,
            "published": True,
            "owners": [owner],
            "position_json": json.dumps(positions),
            "json_metadata": json.dumps(metadata),
        },
    )
    # check what Superset stored
    on_dash = {c["id"] for c in api.call("GET", f"/api/v1/dashboard/{dash_id}/charts")["result"]}
    missing = [n for n, i in chart_ids.items() if i not in on_dash]
    if missing:
        raise ApiError(f"charts not on the dashboard after the update: {missing}")
    stored = json.loads(api.call("GET", f"/api/v1/dashboard/{dash_id}")["result"]["json_metadata"])
    if [f["id"] for f in stored.get("native_filter_configuration", [])] != [NATIVE_FILTER_ID]:
        raise ApiError("the native filter on campaign_id was not stored")

    url = f"{api.base}/superset/dashboard/{DASHBOARD_SLUG}/"
    out = {
        "superset_url": api.base,
        "database_id": db_id,
        "dataset_id": ds_id,
        "dashboard": {"id": dash_id, "slug": DASHBOARD_SLUG, "title": DASHBOARD_TITLE, "url": url},
        "native_filter_id": NATIVE_FILTER_ID,
        "charts": chart_ids,
    }
    out_path = args.out or os.path.join(os.environ.get("SUPERSET_HOME") or ".superset", "provisioned.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"provisioned in {time.monotonic() - t0:.1f} s; ids in {out_path}", file=sys.stderr)
    print(url)


# ---------------------------------------------------------------- chart data


def resolve_chart(api: Superset, name_or_id: str) -> int:
    if name_or_id.isdigit():
        return int(name_or_id)
    found = api.find("chart", "slice_name", name_or_id)
    if not found:
        names = sorted(c["slice_name"] for c in api.call("GET", "/api/v1/chart/", params={"q": "(page_size:100)"})["result"])
        sys.exit(f"superset_provision.py: no chart named {name_or_id!r}; charts: {names}")
    return found[0]["id"]


def chart_data(args: argparse.Namespace) -> None:
    api = Superset(env("SUPERSET_URL", "http://127.0.0.1:8088"), env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD"))
    chart_id = resolve_chart(api, args.chart)
    params = {"format": "json", "type": args.type}
    if not args.cached:
        params["force"] = "true"
    body = api.call("GET", f"/api/v1/chart/{chart_id}/data/", params=params)
    if args.rows:
        body = body["result"][0].get("data", [])
    try:
        json.dump(body, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ---------------------------------------------------------------- browser check


def screenshot(args: argparse.Namespace) -> None:
    """Log in through the form at /login/ (fields #username, #password), open the dashboard in headless
    Chromium, wait until every chart has drawn, optionally pick campaigns in the native filter and apply
    it, save a PNG and print what the page shows as JSON. Exit 1 when a chart shows an error."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base = env("SUPERSET_URL", "http://127.0.0.1:8088").rstrip("/")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        sys.exit("superset_provision.py: screenshot needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1500"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    n_charts = len(CHARTS)
    n_echarts = sum(1 for _, kind, _ in CHARTS if kind != "big")

    def rendered(drv) -> bool:
        holders = drv.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder")
        errors = drv.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder .ant-alert-error")
        if errors:
            return True
        return (
            len(holders) >= n_charts
            and not drv.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder .loading")
            and len(drv.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder canvas")) >= n_echarts
        )

    report: dict = {"url": f"{base}/superset/dashboard/{DASHBOARD_SLUG}/", "screenshot": args.out}
    try:
        d.get(f"{base}/login/")
        WebDriverWait(d, 60).until(EC.presence_of_element_located((By.ID, "username")))
        d.find_element(By.ID, "username").send_keys(env("SUPERSET_ADMIN_USER"))
        d.find_element(By.ID, "password").send_keys(env("SUPERSET_ADMIN_PASSWORD") + "\n")
        WebDriverWait(d, 60).until(lambda drv: "/login" not in drv.current_url)
        t0 = time.monotonic()
        d.get(report["url"])
        WebDriverWait(d, args.timeout).until(rendered)
        report["render_seconds"] = round(time.monotonic() - t0, 2)
        if args.campaign:
            box = WebDriverWait(d, 30).until(
                EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-test='filter-bar'] .ant-select-selector"))
            )
            box.click()
            field = d.switch_to.active_element
            for value in args.campaign:
                field.send_keys(value)
                time.sleep(1)
                field.send_keys(Keys.ENTER)
                time.sleep(0.5)
            field.send_keys(Keys.ESCAPE)
            WebDriverWait(d, 30).until(
                EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-test='filter-bar__apply-button']"))
            ).click()
            report["filter"] = args.campaign
            t0 = time.monotonic()
            time.sleep(1)
            WebDriverWait(d, args.timeout).until(rendered)
            report["filtered_render_seconds"] = round(time.monotonic() - t0, 2)
        time.sleep(1.5)  # animations
        holders = d.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder")
        report["charts_on_page"] = len(holders)
        report["big_numbers"] = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".header-line")]
        report["errors"] = [
            e.text[:300] for e in d.find_elements(By.CSS_SELECTOR, ".dashboard-component-chart-holder .ant-alert-error")
        ]
        d.save_screenshot(args.out)
    finally:
        d.quit()
    print(json.dumps(report, indent=1))
    if report["errors"] or report["charts_on_page"] < n_charts:
        sys.exit(1)


# ---------------------------------------------------------------- admin user


def admin(_args: argparse.Namespace) -> None:
    user, password = env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD")
    email = os.environ.get("SUPERSET_ADMIN_EMAIL") or f"{user}@localhost.localdomain"
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset import security_manager as sm

        role = sm.find_role("Admin")
        if role is None:
            sys.exit("no Admin role: run `superset init` first")
        found = sm.find_user(username=user)
        if found is None:
            if not sm.add_user(user, "Superset", "Admin", email, [role], password=password):
                sys.exit(f"could not create the admin user {user!r}")
            print(f"admin user {user!r} created")
        else:
            sm.reset_password(found.id, password)
            if role not in found.roles:
                found.roles.append(role)
                sm.update_user(found)
            print(f"admin user {user!r} exists: password (and Admin role) set")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("provision")
    pp.add_argument("--out", help="JSON file of the ids (default SUPERSET_HOME/provisioned.json)")
    pp.add_argument("--schema", default=os.environ.get("CAMPAIGN_SQL_SCHEMA", "campaigns"))
    pp.add_argument(
        "--lookback-hours",
        type=int,
        default=int(os.environ.get("CAMPAIGN_DASHBOARD_LOOKBACK_HOURS", "0")),
        help="time series show only the last N hours (WHERE window_start >= NOW() - INTERVAL 'N hours'); "
        "0 = everything (default; the totals and the top campaigns always cover everything)",
    )
    pc = sub.add_parser("chart-data")
    pc.add_argument("chart", help="chart name (slice_name) or id")
    pc.add_argument("--rows", action="store_true", help="print only the first query's rows")
    pc.add_argument("--cached", action="store_true", help="allow Superset's cache (default force=true)")
    pc.add_argument("--type", default="full", choices=["full", "query", "samples", "results"])
    ps = sub.add_parser("screenshot")
    ps.add_argument("--out", default="dashboard.png", help="PNG file (default dashboard.png)")
    ps.add_argument("--campaign", action="append", help="pick this campaign_id in the native filter (repeatable)")
    ps.add_argument("--timeout", type=int, default=120, help="seconds to wait for the charts")
    sub.add_parser("admin")
    args = p.parse_args()
    try:
        {"provision": provision, "chart-data": chart_data, "screenshot": screenshot, "admin": admin}[args.cmd](args)
    except ApiError as e:
        sys.exit(f"superset_provision.py: {e}")


if __name__ == "__main__":
    main()
