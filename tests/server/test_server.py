"""`aifuncs serve` as a real process on 127.0.0.1, driven by clients nobody here wrote (mlflow.deployments,
databricks-sdk) and by plain HTTP for what they do not show: 401s, 403s, 404s that read like missing ones, 429."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pytest
from servers import FakeServer, free_port, running

import aifuncs
import aifuncs.governance as gov
from aifuncs.governance.egress import EgressPolicy


@dataclass
class Server:
    url: str
    tokens: dict[str, str]
    llm: FakeServer


@pytest.fixture
def server(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_models: object
) -> Iterator[Server]:
    monkeypatch.delenv("AIFUNCS_TOKEN", raising=False)
    for name in ("alice", "bob", "carol"):
        gov.create_user(name)
    tokens = {name: gov.create_token(name) for name in ("alice", "bob", "carol")}
    revoked = gov.create_token("carol")
    gov.revoke_token(gov.list_tokens("carol")[-1].id)
    tokens["revoked"] = revoked
    gov.grant_entitlement("alice")  # alice creates endpoints of her own over REST
    EgressPolicy(home / "catalog.db").allow(
        "127.0.0.1", gov.whoami()
    )  # the fake upstream, for her configs too
    aifuncs.endpoints.create("doubler", kind="python", function="sample_models:doubled", returns="DOUBLE")
    aifuncs.endpoints.create("wine", kind="mlflow", model_uri=mlflow_models.sklearn_uri)  # type: ignore[attr-defined]
    with FakeServer(keep_bodies=True) as llm:
        aifuncs.endpoints.create("llm", kind="openai", model="m", base_url=llm.url + "/v1")
        aifuncs.endpoints.create("emb", kind="openai", model="e", task="embeddings", base_url=llm.url + "/v1")
        for name in ("doubler", "wine", "llm", "emb"):
            aifuncs.endpoints.update_permissions(name, [{"user_name": "alice", "permission_level": "CAN_QUERY"},
                                                        {"user_name": "bob", "permission_level": "CAN_VIEW"}])  # fmt: skip
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
               "MLFLOW_TRACKING_URI": mlflow_models.tracking_uri}  # type: ignore[attr-defined]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        warehouse = tmp_path / "warehouse.duckdb"
        with duckdb.connect(str(warehouse)) as db:
            db.execute("CREATE TABLE reviews AS SELECT i AS id, 'review ' || i AS body FROM range(1, 4) t(i)")
        command = [
            sys.executable,
            "-m",
            "aifuncs.cli",
            "serve",
            "--port",
            str(port),
            "--warehouse",
            str(warehouse),
        ]
        with running(command, url + "/health", tmp_path / "serve.log", env):
            yield Server(url, tokens, llm)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_needs_a_valid_token(server: Server) -> None:
    routes = [
        ("GET", "/api/2.0/serving-endpoints"),
        ("GET", "/api/2.0/serving-endpoints/llm"),
        ("POST", "/serving-endpoints/llm/invocations"),
        ("GET", "/api/2.0/permissions/serving-endpoints/llm"),
    ]
    bad = {
        "no header": {},
        "other scheme": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        "garbage": auth("hunter2"),
        "bad checksum": auth(
            server.tokens["alice"][:-1] + ("A" if server.tokens["alice"][-1] != "A" else "B")
        ),
        "unknown": auth("aif_u_" + "0" * 30 + server.tokens["alice"][-6:]),
        "revoked": auth(server.tokens["revoked"]),
    }
    with httpx.Client(base_url=server.url) as client:
        for case, headers in bad.items():
            for method, path in routes:
                answer = client.request(method, path, headers=headers, json={"inputs": ["hi"]})
                assert answer.status_code == 401, (case, path, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer"), case
                assert answer.json()["error_code"] == "UNAUTHENTICATED"
    assert server.llm.stats.requests == 0  # nothing reached a model


def test_the_mlflow_deployments_client_unmodified(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", server.tokens["alice"])
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "5")
    client = get_deploy_client("databricks")
    names = sorted(e["name"] for e in client.list_endpoints())
    assert names == ["doubler", "emb", "llm", "wine"]
    endpoint = client.get_endpoint("wine")
    assert endpoint["state"]["ready"] == "READY" and endpoint["permission_level"] == "CAN_QUERY"
    assert endpoint["config"]["served_entities"][0]["entity_name"] == "wine"
    assert client.predict(endpoint="doubler", inputs={"inputs": [1.5, 2.0]}) == {"predictions": [3.0, 4.0]}
    records = [
        {"alcohol": 13.2, "malic_acid": 1.78, "flavanoids": 2.76, "color_intensity": 4.38, "proline": 1050.0}
    ]
    answer = client.predict(endpoint="wine", inputs={"dataframe_records": records * 3})
    assert answer["predictions"] == [0, 0, 0]


def test_databricks_sdk_permissions_and_queries(server: Server) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import NotFound, PermissionDenied
    from databricks.sdk.service.serving import (
        ServingEndpointAccessControlRequest,
        ServingEndpointPermissionLevel,
    )

    owner = gov.create_token("alice")  # alice holds CAN_QUERY: she may query, not manage
    alice = WorkspaceClient(host=server.url, token=owner)
    assert sorted(e.name for e in alice.serving_endpoints.list()) == ["doubler", "emb", "llm", "wine"]
    answer = alice.serving_endpoints.query(name="doubler", inputs=[10.0])
    assert answer.predictions == [20.0]
    with pytest.raises(PermissionDenied):
        alice.serving_endpoints.get_permissions(serving_endpoint_id="doubler")
    gov.create_user("dana", admin=True)
    admin = WorkspaceClient(host=server.url, token=gov.create_token("dana"))
    admin.serving_endpoints.update_permissions(
        serving_endpoint_id="doubler",
        access_control_list=[ServingEndpointAccessControlRequest(
            user_name="carol", permission_level=ServingEndpointPermissionLevel.CAN_QUERY)],
    )  # fmt: skip
    levels = {a.user_name: a.all_permissions[0].permission_level.value
              for a in admin.serving_endpoints.get_permissions(serving_endpoint_id="doubler").access_control_list}  # fmt: skip
    assert levels == {"alice": "CAN_QUERY", "bob": "CAN_VIEW", "carol": "CAN_QUERY", "dana": "CAN_MANAGE"}
    carol = WorkspaceClient(host=server.url, token=server.tokens["carol"])
    assert carol.serving_endpoints.query(name="doubler", inputs=[1.0]).predictions == [2.0]
    with pytest.raises(NotFound):  # she may not view 'wine': it reads as missing
        carol.serving_endpoints.get(name="wine")


def test_refusals_read_as_clients_expect(server: Server) -> None:
    # httpx's default 5 s read timeout is not a bound on a loaded machine: each refusal comes at once or not at all
    with httpx.Client(base_url=server.url, timeout=120) as client:
        bob = auth(server.tokens["bob"])
        viewed = client.post("/serving-endpoints/doubler/invocations", headers=bob, json={"inputs": [1.0]})
        assert viewed.status_code == 403 and viewed.json()["error_code"] == "PERMISSION_DENIED"
        carol = auth(server.tokens["carol"])
        hidden = client.get("/api/2.0/serving-endpoints/wine", headers=carol)
        missing = client.get("/api/2.0/serving-endpoints/nope", headers=carol)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["message"].replace("wine", "X") == missing.json()["message"].replace("nope", "X")
        alice = auth(server.tokens["alice"])
        bad = client.post("/serving-endpoints/doubler/invocations", headers=alice, content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error_code"] == "MALFORMED_REQUEST"
        wrong = client.post(
            "/serving-endpoints/wine/invocations", headers=alice, json={"dataframe_records": [{"x": 1}]}
        )
        assert wrong.status_code == 400 and "missing" in wrong.json()["message"]
        big = client.post(
            "/serving-endpoints/doubler/invocations", headers=alice, content=b"x" * (17 * 1024 * 1024)
        )
        assert big.status_code == 413
        aifuncs.endpoints.set_rate_limits("doubler", [{"calls": 1, "key": "user"}])
        first = client.post("/serving-endpoints/doubler/invocations", headers=alice, json={"inputs": [1.0]})
        assert first.status_code == 200
        limited = client.post("/serving-endpoints/doubler/invocations", headers=alice, json={"inputs": [1.0]})
        assert limited.status_code == 429 and limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert 55 <= int(limited.headers["retry-after"]) <= 60
        assert client.get("/health").status_code == 200  # and it keeps serving


def test_a_public_address_needs_tls() -> None:
    from aifuncs.errors import ConfigError
    from aifuncs.server import serve

    with pytest.raises(ConfigError, match="Refusing to serve 0.0.0.0 over plain HTTP"):
        serve("0.0.0.0", free_port())
    with pytest.raises(ConfigError, match="Give both --tls-cert and --tls-key"):
        serve("127.0.0.1", free_port(), tls_cert="cert.pem")


def test_endpoints_made_over_rest_are_catalog_endpoints(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", server.tokens["alice"])
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "5")
    client = get_deploy_client("databricks")
    made = client.create_endpoint(
        "wine-v1",
        config={
            "served_entities": [
                {
                    "entity_name": "wine",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": True,
                }
            ]
        },  # fmt: skip
    )
    assert made["permission_level"] == "CAN_MANAGE"  # alice made it: hers to manage, nobody else's
    assert aifuncs.endpoints.get("wine-v1").options["model_uri"] == "models:/wine/1"  # the one catalog
    records = [
        {"alcohol": 13.2, "malic_acid": 1.78, "flavanoids": 2.76, "color_intensity": 4.38, "proline": 1050.0}
    ]
    assert client.predict(endpoint="wine-v1", inputs={"dataframe_records": records}) == {"predictions": [0]}
    updated = client.update_endpoint_config(
        "wine-v1", config={"served_entities": [{"entity_name": "wine", "entity_version": "1"}]}
    )
    # Its model loads in the server's workers while version 1 serves, then version 2 takes over
    assert updated.get("pending_config", updated["config"])["config_version"] == 2
    deadline = time.monotonic() + 120
    while client.get_endpoint("wine-v1")["config"]["config_version"] != 2:
        assert time.monotonic() < deadline, client.get_endpoint("wine-v1")
        time.sleep(0.2)
    with httpx.Client(base_url=server.url) as raw:
        listed = raw.get("/api/2.0/serving-endpoints", headers=auth(server.tokens["bob"])).json()
        assert "wine-v1" not in [e["name"] for e in listed["endpoints"]]
        plaintext = raw.post(
            "/api/2.0/serving-endpoints",
            headers=auth(server.tokens["alice"]),
            json={"name": "gpt", "config": {"served_entities": [{"external_model": {
                "name": "gpt-4o", "provider": "openai", "task": "llm/v1/chat",
                "openai_config": {"openai_api_key_plaintext": "sk-secret"}}}]}},
        )  # fmt: skip
        assert plaintext.status_code == 400 and "never stores keys" in plaintext.json()["message"]
        assert "sk-secret" not in plaintext.text
    client.delete_endpoint("wine-v1")
    assert "wine-v1" not in [e["name"] for e in client.list_endpoints()]


def test_databricks_sdk_creates_an_external_model_endpoint(server: Server) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import EndpointCoreConfigInput, ExternalModel, ServedEntityInput

    alice = WorkspaceClient(host=server.url, token=server.tokens["alice"])
    entity = ServedEntityInput(
        external_model=ExternalModel.from_dict(
            {
                "name": "m",
                "provider": "custom",
                "task": "llm/v1/chat",
                "custom_provider_config": {"custom_provider_url": server.llm.url + "/v1"},
            }  # fmt: skip
        )
    )
    made = alice.serving_endpoints.create_and_wait(
        name="echo", config=EndpointCoreConfigInput(name="echo", served_entities=[entity])
    )
    assert made.state.config_update.value == "NOT_UPDATING"
    assert alice.serving_endpoints.query(name="echo", inputs=["hi there"]).predictions == ["echo: hi there"]


def test_tags_metrics_and_the_served_model_route(server: Server) -> None:
    gov.create_user("erin", admin=True)
    erin = auth(gov.create_token("erin"))
    alice = auth(server.tokens["alice"])
    with httpx.Client(base_url=server.url) as client:
        tagged = client.patch("/api/2.0/serving-endpoints/doubler/tags", headers=erin,
                              json={"add_tags": [{"key": "team", "value": "growth"}, {"key": "tier", "value": "1"}]})  # fmt: skip
        assert tagged.json() == {"tags": [{"key": "team", "value": "growth"}, {"key": "tier", "value": "1"}]}
        client.patch("/api/2.0/serving-endpoints/doubler/tags", headers=erin, json={"delete_tags": ["tier"]})
        assert client.get("/api/2.0/serving-endpoints/doubler", headers=alice).json()["tags"] == [
            {"key": "team", "value": "growth"}
        ]
        refused = client.patch(
            "/api/2.0/serving-endpoints/doubler/tags", headers=alice, json={"delete_tags": ["team"]}
        )
        assert refused.status_code == 403
        for _ in range(3):
            answer = client.post("/serving-endpoints/doubler/served-models/doubler/invocations", headers=alice,
                                 json={"inputs": [1.0, 2.0]})  # fmt: skip
            assert (
                answer.json() == {"predictions": [2.0, 4.0]}
                and answer.headers["served-model-name"] == "doubler"
            )
        other = client.post(
            "/serving-endpoints/doubler/served-models/nope/invocations", headers=alice, json={"inputs": [1.0]}
        )
        assert other.status_code == 404
        text = client.get("/api/2.0/serving-endpoints/doubler/metrics", headers=alice).text
        assert 'request_count_total{endpoint="doubler"} 3' in text and text.endswith("# EOF\n")


def test_the_openai_client_unmodified(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    for base in ("/serving-endpoints", "/v1"):
        client = openai.OpenAI(api_key=server.tokens["alice"], base_url=server.url + base, max_retries=0)
        reply = client.chat.completions.create(
            model="llm",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        )
        assert reply.choices[0].message.content == "echo: hello" and reply.object == "chat.completion"
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1, 2)  # as the model reported
        assert server.llm.stats.bodies[-1]["messages"] == [  # the whole conversation reached the model
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
        ]
        vectors = client.embeddings.create(model="emb", input=["ab", "abcd"])
        assert [d.embedding for d in vectors.data] == [[2.0, 1.0], [4.0, 1.0]]
        assert sorted(m.id for m in client.models.list()) == ["doubler", "emb", "llm", "wine"]
    bob = openai.OpenAI(
        api_key=server.tokens["bob"], base_url=server.url + "/serving-endpoints", max_retries=0
    )
    with pytest.raises(openai.PermissionDeniedError):
        bob.chat.completions.create(model="llm", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="nope", base_url=server.url + "/v1", max_retries=0).models.list()

    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", server.tokens["alice"])
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "5")
    answer = get_deploy_client("databricks").predict(
        endpoint="llm", inputs={"messages": [{"role": "user", "content": "from mlflow"}], "max_tokens": 20}
    )
    assert answer["choices"][0]["message"]["content"] == "echo: from mlflow"
    assert server.llm.stats.bodies[-1]["max_tokens"] == 20
    chunks = list(get_deploy_client("databricks").predict_stream(
        endpoint="llm", inputs={"messages": [{"role": "user", "content": "streamed"}]}
    ))  # fmt: skip
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "echo: streamed"
    client = openai.OpenAI(
        api_key=server.tokens["alice"], base_url=server.url + "/serving-endpoints", max_retries=0
    )
    stream = client.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "again"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "echo: again"


def test_no_route_in_the_openapi_document_ignores_authentication(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        document = client.get("/openapi.json").json()
        guarded = 0
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                concrete = (
                    path.replace("{name}", "doubler")
                    .replace("{endpoint_id}", "doubler")
                    .replace("{served_model_name}", "doubler")
                )
                answer = client.request(method.upper(), concrete, json={"inputs": [1.0], "model": "doubler"})
                if "security" in operation:
                    guarded += 1
                    assert answer.status_code == 401, (method, path, answer.status_code)
                else:
                    assert answer.status_code == 200, (method, path)
        assert guarded >= 20


def test_sql_over_http_runs_as_the_caller_in_a_sandbox(server: Server, home: Path) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.sql import StatementParameterListItem, StatementState

    alice = WorkspaceClient(host=server.url, token=server.tokens["alice"])
    answer = alice.statement_execution.execute_statement(
        statement="SELECT id, ai_query('doubler', id::DOUBLE) AS doubled, aifuncs_current_principal() AS who"
        " FROM reviews ORDER BY id",
        warehouse_id="any",
        wait_timeout="30s",
    )
    assert answer.status.state == StatementState.SUCCEEDED, answer.status
    assert answer.result.data_array == [["1", "2.0", "alice"], ["2", "4.0", "alice"], ["3", "6.0", "alice"]]
    assert [c.name for c in answer.manifest.schema.columns] == ["id", "doubled", "who"]
    typed = alice.statement_execution.execute_statement(
        statement="SELECT :x + 1 AS y", warehouse_id="any", wait_timeout="10s",
        parameters=[StatementParameterListItem(name="x", value="41", type="INT")],
    )  # fmt: skip
    assert typed.result.data_array == [["42"]]
    catalog = str(home / "catalog.db")
    for escape in (
        f"SELECT * FROM read_csv('{catalog}')",
        f"ATTACH '{catalog}' AS stolen (TYPE sqlite)",
        "SET enable_external_access = true",
        "COPY reviews TO '/tmp/leak.csv'",
        "CREATE TABLE warehouse.copy AS SELECT * FROM reviews",
        "CREATE OR REPLACE MACRO aifuncs_current_principal() AS 'admin'",
    ):
        refused = alice.statement_execution.execute_statement(
            statement=escape, warehouse_id="any", wait_timeout="10s"
        )
        assert refused.status.state == StatementState.FAILED, escape
    still = alice.statement_execution.execute_statement(
        statement="SET VARIABLE who = 'admin'; SELECT aifuncs_current_principal()",
        warehouse_id="any",
        wait_timeout="10s",
    )
    assert still.result.data_array == [["alice"]]
    bob = WorkspaceClient(host=server.url, token=server.tokens["bob"])
    denied = bob.statement_execution.execute_statement(
        statement="SELECT ai_query('doubler', 1.0::DOUBLE)", warehouse_id="any", wait_timeout="10s"
    )
    assert denied.status.state == StatementState.FAILED and "needs CAN_QUERY" in denied.status.error.message
    with httpx.Client(base_url=server.url) as client:  # alice's statement reads as missing to bob
        found = client.get(
            f"/api/2.0/sql/statements/{answer.statement_id}", headers=auth(server.tokens["bob"])
        )
        assert found.status_code == 404
        mine = client.get(
            f"/api/2.0/sql/statements/{answer.statement_id}", headers=auth(server.tokens["alice"])
        )
        assert mine.json()["status"]["state"] == "SUCCEEDED"


def test_each_endpoint_describes_its_query(server: Server) -> None:
    alice = auth(server.tokens["alice"])
    with httpx.Client(base_url=server.url) as client:
        wine = client.get("/api/2.0/serving-endpoints/wine/openapi", headers=alice).json()
        operation = wine["paths"]["/serving-endpoints/wine/invocations"]["post"]
        row = operation["requestBody"]["content"]["application/json"]["schema"]["properties"][
            "dataframe_records"
        ]
        assert row["items"]["properties"]["proline"] == {"type": "number"}
        assert sorted(row["items"]["required"]) == [
            "alcohol",
            "color_intensity",
            "flavanoids",
            "malic_acid",
            "proline",
        ]
        chat = client.get("/api/2.0/serving-endpoints/llm/openapi", headers=alice).json()
        body = chat["paths"]["/serving-endpoints/llm/invocations"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["required"] == ["messages"]
        hidden = client.get("/api/2.0/serving-endpoints/wine/openapi", headers=auth(server.tokens["carol"]))
        assert hidden.status_code == 404
