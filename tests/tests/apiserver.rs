//! Self-tests of the test API server with an unmodified `kube` client and
//! `kube::runtime::watcher`, all on 127.0.0.1, every wait bounded.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, ResourceExt, VersionMatch,
    WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector};
use pullwatch_testbench::{
    ApiTarget, TestApiServer, cronjob, daemonset, decode_query, deployment, job, namespace, pod,
    secret_dockercfg, secret_dockerconfigjson, secret_opaque, service_account, statefulset,
    with_labels, with_owner, with_pull_secrets,
};

const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

type Events<K> = Pin<Box<dyn Stream<Item = Result<Event<K>, watcher::Error>> + Send>>;

fn watch_all<K>(client: kube::Client, config: watcher::Config) -> Events<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    watcher(Api::<K>::all(client), config).boxed()
}

/// The next event, rendered as kube renders it (`Init`, `InitApply(name)`, `Apply(name)`...)
/// or `Err(...)`.
async fn next<K: kube::Resource>(events: &mut Events<K>) -> String {
    match within("a watcher event", events.next()).await {
        Some(Ok(e)) => e.to_string(),
        Some(Err(e)) => format!("Err({e})"),
        None => "End".to_owned(),
    }
}

/// Collects events up to and including `InitDone`.
async fn until_init_done<K: kube::Resource>(events: &mut Events<K>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let e = next(events).await;
        let done = e == "InitDone";
        out.push(e);
        if done {
            return out;
        }
    }
}

fn api_status(err: &kube::Error) -> &kube::core::Status {
    match err {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn server_with_namespace(ns: &str) -> TestApiServer {
    let server = TestApiServer::start().await.unwrap();
    server.apply(&namespace(ns, &[])).unwrap();
    server
}

#[tokio::test]
async fn discovery_and_version() {
    let server = TestApiServer::start().await.unwrap();
    let client = server.kube_client();
    let version = within("version", client.apiserver_version()).await.unwrap();
    assert_eq!(version.major, "1");
    let groups = within("groups", client.list_api_groups()).await.unwrap();
    let names: Vec<_> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["apps", "batch"]);
    let core = within("core", client.list_core_api_resources("v1"))
        .await
        .unwrap();
    let secrets = core.resources.iter().find(|r| r.name == "secrets").unwrap();
    assert!(secrets.namespaced);
    assert!(secrets.verbs.contains(&"watch".to_owned()));
    let apps = within("apps", client.list_api_group_resources("apps/v1"))
        .await
        .unwrap();
    assert!(apps.resources.iter().any(|r| r.name == "deployments"));

    // kube's own discovery, legacy and aggregated.
    for aggregated in [false, true] {
        let d = kube::Discovery::new(client.clone());
        let d = if aggregated {
            within("aggregated discovery", d.run_aggregated()).await
        } else {
            within("discovery", d.run()).await
        }
        .unwrap();
        let (ar, caps) = d
            .resolve_gvk(&kube::core::GroupVersionKind::gvk("batch", "v1", "CronJob"))
            .unwrap();
        assert_eq!(ar.plural, "cronjobs");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        assert!(d.has_group("apps"));
    }
}

#[tokio::test]
async fn create_list_get_replace_delete_round_trip() {
    let server = TestApiServer::start().await.unwrap();
    let client = server.kube_client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "apps");
    let pp = PostParams::default();

    // Namespaced objects need their namespace, as on a real server.
    let err = within(
        "create",
        deployments.create(&pp, &deployment("apps", "web", &["nginx:1"])),
    )
    .await
    .unwrap_err();
    let s = api_status(&err);
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"), "{s:?}");
    assert_eq!(s.message, "namespaces \"apps\" not found");

    let ns = within(
        "create ns",
        namespaces.create(&pp, &namespace("apps", &[("team", "a")])),
    )
    .await
    .unwrap();
    assert_eq!(
        ns.status.unwrap().phase.as_deref(),
        Some("Active"),
        "a namespace is created Active"
    );

    let created = within(
        "create",
        deployments.create(&pp, &deployment("apps", "web", &["nginx:1"])),
    )
    .await
    .unwrap();
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    assert!(created.uid().is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.metadata.managed_fields.is_some(),
        "the server tracks managedFields like a real one"
    );
    assert_eq!(rv1, server.resource_version());

    let again = within(
        "create twice",
        deployments.create(&pp, &deployment("apps", "web", &["nginx:1"])),
    )
    .await
    .unwrap_err();
    let s = api_status(&again);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "deployments.apps \"web\" already exists");

    let got = within("get", deployments.get("web")).await.unwrap();
    assert_eq!(got.uid(), created.uid());
    let listed = within("list", deployments.list(&ListParams::default()))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.metadata.resource_version, Some(rv1.to_string()));
    let all = within(
        "list all",
        Api::<Deployment>::all(client.clone()).list(&ListParams::default()),
    )
    .await
    .unwrap();
    assert_eq!(all.items.len(), 1);

    // Replace at the current version: new version, same uid, generation follows the spec.
    let mut changed = got.clone();
    changed
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("nginx:2".into());
    let replaced = within("replace", deployments.replace("web", &pp, &changed))
        .await
        .unwrap();
    let rv2: u64 = replaced.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1);
    assert_eq!(replaced.uid(), created.uid());
    assert_eq!(
        replaced.metadata.creation_timestamp,
        created.metadata.creation_timestamp
    );
    assert_eq!(replaced.metadata.generation, Some(2));

    // Replace at a stale version: 409 Conflict.
    let stale = within("stale replace", deployments.replace("web", &pp, &changed))
        .await
        .unwrap_err();
    let s = api_status(&stale);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{s:?}");

    // Status goes through /status; a replace of the object keeps it, as on a real server.
    let mut with_status = replaced.clone();
    with_status.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        replicas: Some(3),
        ..Default::default()
    });
    let status_set = within(
        "replace_status",
        deployments.replace_status("web", &pp, &with_status),
    )
    .await
    .unwrap();
    assert_eq!(status_set.status.as_ref().unwrap().replicas, Some(3));
    assert_eq!(
        status_set.metadata.generation,
        Some(2),
        "status is not spec"
    );
    let mut relabelled = status_set.clone();
    relabelled.status = None;
    relabelled.metadata.labels = Some([("l".to_owned(), "1".to_owned())].into());
    let relabelled = within("replace", deployments.replace("web", &pp, &relabelled))
        .await
        .unwrap();
    assert_eq!(relabelled.status.unwrap().replicas, Some(3));

    // Merge patch.
    let patched = within(
        "patch",
        deployments.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
        ),
    )
    .await
    .unwrap();
    assert_eq!(patched.labels().get("x").map(String::as_str), Some("y"));

    // Delete, then 404.
    let deleted = within(
        "delete",
        deployments.delete("web", &DeleteParams::default()),
    )
    .await
    .unwrap();
    let status = deleted.right().expect("a Status for an immediate deletion");
    assert_eq!(status.details.unwrap().name, "web");
    let gone = within("get deleted", deployments.get("web"))
        .await
        .unwrap_err();
    let s = api_status(&gone);
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "deployments.apps \"web\" not found");
    assert!(
        within("get_opt", deployments.get_opt("web"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(server.get::<Deployment>("apps", "web").is_none());
}

#[tokio::test]
async fn every_builder_round_trips_through_the_api() {
    let server = server_with_namespace("ns").await;
    let client = server.kube_client();
    macro_rules! round_trip {
        ($ty:ty, $obj:expr) => {{
            let api: Api<$ty> = Api::namespaced(client.clone(), "ns");
            let created = within("create", api.create(&PostParams::default(), &$obj))
                .await
                .unwrap();
            let listed = within(
                "list",
                Api::<$ty>::all(client.clone()).list(&ListParams::default()),
            )
            .await
            .unwrap();
            assert_eq!(listed.items.len(), 1, "{}", stringify!($ty));
            created
        }};
    }
    let d = round_trip!(
        Deployment,
        with_pull_secrets(
            deployment("ns", "d", &["web=nginx:1", "busybox"]),
            &["regcred"]
        )
    );
    let spec = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.containers[0].name, "web");
    assert_eq!(spec.containers[1].name, "c1");
    assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
    round_trip!(
        k8s_openapi::api::apps::v1::StatefulSet,
        statefulset("ns", "s", &["a:1"])
    );
    round_trip!(
        k8s_openapi::api::apps::v1::DaemonSet,
        daemonset("ns", "ds", &["a:1"])
    );
    let cj = round_trip!(
        k8s_openapi::api::batch::v1::CronJob,
        cronjob("ns", "cj", &["a:1"])
    );
    let j = round_trip!(
        k8s_openapi::api::batch::v1::Job,
        with_owner(job("ns", "cj-1", &["a:1"]), &cj)
    );
    let owner = &j.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CronJob", Some(true))
    );
    assert_eq!(Some(&owner.uid), cj.metadata.uid.as_ref());
    round_trip!(Pod, pod("ns", "p", &["a:1"]));
    let sa = round_trip!(
        k8s_openapi::api::core::v1::ServiceAccount,
        service_account("ns", "default", &["regcred"])
    );
    assert_eq!(sa.image_pull_secrets.unwrap()[0].name, "regcred");
    let s = round_trip!(
        Secret,
        secret_dockerconfigjson("ns", "regcred", "r.example:5000", "u", "p")
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&s.data.unwrap()[".dockerconfigjson"].0).unwrap();
    assert_eq!(doc["auths"]["r.example:5000"]["auth"], "dTpw");
}

#[tokio::test]
async fn pagination_is_a_consistent_snapshot() {
    let server = server_with_namespace("ns").await;
    for i in 0..5 {
        server
            .apply(&pod("ns", &format!("p{i}"), &["a:1"]))
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(server.kube_client(), "ns");
    let first = within("page 1", pods.list(&ListParams::default().limit(2)))
        .await
        .unwrap();
    let names =
        |l: &kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    assert_eq!(names(&first), ["p0", "p1"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let rv = first.metadata.resource_version.clone().unwrap();
    let token = first.metadata.continue_.clone().unwrap();

    // Changes between pages do not show in the rest of the list.
    server.delete::<Pod>("ns", "p3");
    server.apply(&pod("ns", "p2a", &["a:1"])).unwrap();
    server.apply(&pod("ns", "p2", &["changed:1"])).unwrap();

    let second = within(
        "page 2",
        pods.list(&ListParams::default().limit(2).continue_token(&token)),
    )
    .await
    .unwrap();
    assert_eq!(names(&second), ["p2", "p3"]);
    assert_eq!(
        second.items[0].spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("a:1"),
        "the snapshot shows p2 as it was"
    );
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let token2 = second.metadata.continue_.clone().unwrap();
    let third = within(
        "page 3",
        pods.list(&ListParams::default().limit(2).continue_token(&token2)),
    )
    .await
    .unwrap();
    assert_eq!(names(&third), ["p4"]);
    assert_eq!(third.metadata.continue_, None);

    // A fresh list sees the changes.
    let now = within("list", pods.list(&ListParams::default()))
        .await
        .unwrap();
    assert_eq!(names(&now), ["p0", "p1", "p2", "p2a", "p4"]);

    // Exact and NotOlderThan.
    let exact = within(
        "exact",
        pods.list(&ListParams::default().at(&rv).matching(VersionMatch::Exact)),
    )
    .await
    .unwrap();
    assert_eq!(names(&exact), ["p0", "p1", "p2", "p3", "p4"]);
    let any = within("any", pods.list(&ListParams::default().match_any()))
        .await
        .unwrap();
    assert_eq!(names(&any), ["p0", "p1", "p2", "p2a", "p4"]);

    // After a compaction the continue token and the exact version expire: HTTP 410.
    server.compact();
    let err = within(
        "expired continue",
        pods.list(&ListParams::default().limit(2).continue_token(&token2)),
    )
    .await
    .unwrap_err();
    let s = api_status(&err);
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{s:?}");
    let err = within(
        "expired exact",
        pods.list(&ListParams::default().at(&rv).matching(VersionMatch::Exact)),
    )
    .await
    .unwrap_err();
    assert_eq!(api_status(&err).code, 410);
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted_in_order() {
    let server = server_with_namespace("ns").await;
    server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    let mut events = watch_all::<Deployment>(server.kube_client(), watcher::Config::default());
    assert_eq!(
        until_init_done(&mut events).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    // Nothing has happened yet, so the next poll starts the watch: make changes once it is open.
    let watching = async {
        server
            .wait_for_watches("deployments", 1, WAIT)
            .await
            .unwrap();
        server.apply(&deployment("ns", "b", &["b:1"])).unwrap();
        server.apply(&deployment("ns", "a", &["a:2"])).unwrap();
        server.delete::<Deployment>("ns", "b");
    };
    let (first, ()) = tokio::join!(next(&mut events), watching);
    assert_eq!(first, "Apply(b)");
    assert_eq!(next(&mut events).await, "Apply(a)");
    assert_eq!(next(&mut events).await, "Delete(b)");

    // What kube sent: a paginated LIST (limit 500), then a WATCH from the list's version with
    // bookmarks and a timeout.
    let lists = server.list_requests("deployments");
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert!(
        lists[0].contains(&("limit".into(), "500".into())),
        "{lists:?}"
    );
    let watches = server.watch_requests("deployments");
    assert_eq!(watches.len(), 1, "{watches:?}");
    let w = &watches[0];
    for (k, v) in [("allowWatchBookmarks", "true"), ("timeoutSeconds", "290")] {
        assert!(w.contains(&(k.into(), v.into())), "{w:?}");
    }
    let rv = w.iter().find(|(k, _)| k == "resourceVersion").unwrap();
    assert!(!rv.1.is_empty() && rv.1 != "0", "{w:?}");
}

#[tokio::test]
async fn watcher_relists_after_compaction() {
    let server = server_with_namespace("ns").await;
    server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    server.apply(&deployment("ns", "b", &["b:1"])).unwrap();
    let (reader, writer) = reflector::store::<Deployment>();
    let mut events: Events<Deployment> = reflector(
        writer,
        watcher(
            Api::<Deployment>::all(server.kube_client()),
            watcher::Config::default(),
        ),
    )
    .boxed();
    assert_eq!(until_init_done(&mut events).await.len(), 4);
    // Poll once so the watch opens, with a change to see.
    let (first, ()) = tokio::join!(next(&mut events), async {
        server
            .wait_for_watches("deployments", 1, WAIT)
            .await
            .unwrap();
        server.apply(&deployment("ns", "c", &["c:1"])).unwrap();
    });
    assert_eq!(first, "Apply(c)");

    // While the watcher is not polled: history is compacted, the watch ends, things change.
    server.compact();
    assert_eq!(server.drop_watches(), 1);
    server.apply(&deployment("ns", "d", &["d:1"])).unwrap();
    server.delete::<Deployment>("ns", "a");

    // The watcher re-watches from its version, gets 410 Expired, relists.
    let e = next(&mut events).await;
    assert!(
        e.starts_with("Err(error returned by apiserver during watch"),
        "{e}"
    );
    assert!(e.contains("Expired"), "{e}");
    let relisted = until_init_done(&mut events).await;
    assert_eq!(
        relisted,
        [
            "Init",
            "InitApply(b)",
            "InitApply(c)",
            "InitApply(d)",
            "InitDone"
        ]
    );
    let mut names: Vec<_> = reader.state().iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        ["b", "c", "d"],
        "the store dropped what the relist did not return"
    );

    assert_eq!(
        server.list_requests("deployments").len(),
        2,
        "a second LIST"
    );
    let watches = server.watch_requests("deployments");
    assert_eq!(watches.len(), 2, "{watches:?}");
}

#[tokio::test]
async fn watcher_resumes_without_relisting_when_history_allows() {
    let server = server_with_namespace("ns").await;
    let mut events = watch_all::<Deployment>(server.kube_client(), watcher::Config::default());
    assert_eq!(until_init_done(&mut events).await, ["Init", "InitDone"]);
    let (first, ()) = tokio::join!(next(&mut events), async {
        server
            .wait_for_watches("deployments", 1, WAIT)
            .await
            .unwrap();
        server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    });
    assert_eq!(first, "Apply(a)");
    assert_eq!(server.drop_watches(), 1);
    server.apply(&deployment("ns", "b", &["b:1"])).unwrap();
    server.delete::<Deployment>("ns", "a");
    assert_eq!(next(&mut events).await, "Apply(b)");
    assert_eq!(next(&mut events).await, "Delete(a)");
    assert_eq!(server.list_requests("deployments").len(), 1, "no relist");
    assert_eq!(server.watch_requests("deployments").len(), 2);
}

#[tokio::test]
async fn bookmarks_arrive_when_requested() {
    let server = server_with_namespace("ns").await;
    server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    let api: Api<Deployment> = Api::all(server.kube_client());
    let rv = server.resource_version().to_string();

    // Raw watch with bookmarks: the BOOKMARK carries only the version.
    let mut with = within("watch", api.watch(&WatchParams::default(), &rv))
        .await
        .unwrap()
        .boxed();
    let mut without = within(
        "watch",
        api.watch(&WatchParams::default().disable_bookmarks(), &rv),
    )
    .await
    .unwrap()
    .boxed();
    server
        .wait_for_watches("deployments", 2, WAIT)
        .await
        .unwrap();
    server.apply(&pod("ns", "unrelated", &["x:1"])).unwrap();
    assert_eq!(server.send_bookmarks(), 1);
    match within("bookmark", with.next()).await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
            assert_eq!(
                (b.types.kind.as_str(), b.types.api_version.as_str()),
                ("Deployment", "apps/v1")
            );
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    server.apply(&deployment("ns", "a", &["a:2"])).unwrap();
    assert!(matches!(
        within("event", without.next()).await.unwrap().unwrap(),
        WatchEvent::Modified(_)
    ));

    // A watcher that keeps its version fresh with bookmarks resumes after history moved on;
    // one without bookmarks has to relist.
    server.set_history_limit(Some(2));
    let client = server.kube_client();
    let mut bm = watch_all::<Deployment>(client.clone(), watcher::Config::default());
    let mut no_bm = watch_all::<Deployment>(
        client.clone(),
        watcher::Config::default().disable_bookmarks(),
    );
    until_init_done(&mut bm).await;
    until_init_done(&mut no_bm).await;
    // Poll both until their watches are open (nothing to deliver yet).
    tokio::select! {
        e = bm.next() => panic!("unexpected {e:?}"),
        e = no_bm.next() => panic!("unexpected {e:?}"),
        r = server.wait_for_watches("deployments", 4, WAIT) => r.unwrap(),
    }
    for i in 0..5 {
        server
            .apply(&pod("ns", &format!("p{i}"), &["x:1"]))
            .unwrap();
    }
    assert!(server.send_bookmarks() >= 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bm.next())
            .await
            .is_err(),
        "bookmarks are not events"
    );
    // No need to wait for the bookmark to be read: the stream ends after it.
    server.clear_requests();
    server.drop_watches();
    server.apply(&deployment("ns", "new", &["n:1"])).unwrap();
    assert_eq!(next(&mut bm).await, "Apply(new)");
    assert!(
        server.list_requests("deployments").is_empty(),
        "resumed from the bookmark"
    );
    let e = next(&mut no_bm).await;
    assert!(e.contains("Expired"), "{e}");
    assert_eq!(
        until_init_done(&mut no_bm).await,
        ["Init", "InitApply(a)", "InitApply(new)", "InitDone"]
    );
}

#[tokio::test]
async fn watch_times_out_with_a_final_bookmark() {
    let server = server_with_namespace("ns").await;
    let api: Api<Deployment> = Api::all(server.kube_client());
    let rv = server.resource_version().to_string();
    let started = tokio::time::Instant::now();
    let mut stream = within("watch", api.watch(&WatchParams::default().timeout(1), &rv))
        .await
        .unwrap()
        .boxed();
    server.apply(&pod("ns", "unrelated", &["x:1"])).unwrap();
    let mut events = Vec::new();
    while let Some(e) = within("watch end", stream.next()).await {
        events.push(e.unwrap());
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    match events.as_slice() {
        [WatchEvent::Bookmark(b)] => {
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
        }
        other => panic!("expected one bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_from_an_expired_version_gets_410_in_the_stream() {
    let server = server_with_namespace("ns").await;
    let old = server.resource_version().to_string();
    server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    server.compact();
    let api: Api<Deployment> = Api::all(server.kube_client());
    let mut stream = within("watch", api.watch(&WatchParams::default(), &old))
        .await
        .unwrap()
        .boxed();
    match within("error event", stream.next()).await.unwrap().unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{s:?}");
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(
        within("end", stream.next()).await.is_none(),
        "the stream ends after the error"
    );
    // Watching from "0" or from the current version still works.
    let mut stream = within("watch", api.watch(&WatchParams::default(), "0"))
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        within("added", stream.next()).await.unwrap().unwrap(),
        WatchEvent::Added(_)
    ));
}

#[tokio::test]
async fn reflector_store_converges() {
    let server = server_with_namespace("ns").await;
    server.apply(&namespace("other", &[])).unwrap();
    for i in 0..3 {
        server
            .apply(&deployment("ns", &format!("d{i}"), &["a:1"]))
            .unwrap();
    }
    let (reader, writer) = reflector::store::<Deployment>();
    let stream = reflector(
        writer,
        watcher(
            Api::<Deployment>::all(server.kube_client()),
            watcher::Config::default().page_size(2),
        ),
    );
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    within("store ready", reader.wait_until_ready())
        .await
        .unwrap();
    assert_eq!(reader.state().len(), 3);
    server
        .wait_for_watches("deployments", 1, WAIT)
        .await
        .unwrap();
    server.apply(&deployment("ns", "d1", &["a:2"])).unwrap();
    server.delete::<Deployment>("ns", "d0");
    server.apply(&deployment("other", "d0", &["b:1"])).unwrap();
    let want = || {
        let mut v: Vec<(String, String, String)> = server
            .list::<Deployment>()
            .into_iter()
            .map(|d| {
                let image = d.spec.unwrap().template.spec.unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap();
                (
                    d.metadata.namespace.unwrap(),
                    d.metadata.name.unwrap(),
                    image,
                )
            })
            .collect();
        v.sort();
        v
    };
    let have = || {
        let mut v: Vec<(String, String, String)> = reader
            .state()
            .iter()
            .map(|d| {
                let image = d.spec.clone().unwrap().template.spec.unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap();
                (d.namespace().unwrap(), d.name_any(), image)
            })
            .collect();
        v.sort();
        v
    };
    within("convergence", async {
        while have() != want() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(have().len(), 3);
    // page_size 2 over 3 objects: two LIST pages.
    let lists = server.list_requests("deployments");
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert!(lists[1].iter().any(|(k, _)| k == "continue"), "{lists:?}");
    task.abort();
}

#[tokio::test]
async fn secrets_field_selector_filters_by_type() {
    let server = server_with_namespace("ns").await;
    server
        .apply(&secret_dockerconfigjson("ns", "json", "r:5000", "u", "p"))
        .unwrap();
    server
        .apply(&secret_dockercfg("ns", "cfg", "r:5000", "u", "p"))
        .unwrap();
    server
        .apply(&secret_opaque("ns", "opaque", &[("k", "v")]))
        .unwrap();
    let secrets: Api<Secret> = Api::all(server.kube_client());
    let names = |l: Vec<Secret>| l.iter().map(|s| s.name_any()).collect::<Vec<_>>();

    let json_only = within(
        "list",
        secrets.list(&ListParams::default().fields("type=kubernetes.io/dockerconfigjson")),
    )
    .await
    .unwrap();
    assert_eq!(names(json_only.items), ["json"]);
    let not_opaque = within(
        "list",
        secrets.list(&ListParams::default().fields("type!=Opaque")),
    )
    .await
    .unwrap();
    assert_eq!(names(not_opaque.items), ["cfg", "json"]);
    let by_name = within(
        "list",
        secrets.list(&ListParams::default().fields("metadata.name=cfg,metadata.namespace=ns")),
    )
    .await
    .unwrap();
    assert_eq!(names(by_name.items), ["cfg"]);
    let err = within(
        "bad field",
        secrets.list(&ListParams::default().fields("data.k=v")),
    )
    .await
    .unwrap_err();
    let s = api_status(&err);
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    assert_eq!(s.message, "field label not supported: data.k");

    // A watcher restricted to one type sees only that type, in its list and its watch.
    let config = watcher::Config::default().fields("type=kubernetes.io/dockercfg");
    let mut events = watch_all::<Secret>(server.kube_client(), config);
    assert_eq!(
        until_init_done(&mut events).await,
        ["Init", "InitApply(cfg)", "InitDone"]
    );
    let (e, ()) = tokio::join!(next(&mut events), async {
        server.wait_for_watches("secrets", 1, WAIT).await.unwrap();
        server.apply(&secret_opaque("ns", "opaque2", &[])).unwrap();
        server
            .apply(&secret_dockerconfigjson("ns", "json2", "r", "u", "p"))
            .unwrap();
        server
            .apply(&secret_dockercfg("ns", "cfg2", "r", "u", "p"))
            .unwrap();
    });
    assert_eq!(e, "Apply(cfg2)");
    for q in server
        .list_requests("secrets")
        .iter()
        .chain(&server.watch_requests("secrets"))
        .skip(4)
    {
        assert!(
            q.contains(&(
                "fieldSelector".into(),
                "type=kubernetes.io/dockercfg".into()
            )),
            "{q:?}"
        );
    }
    // The raw request line carries the selector URL-encoded.
    let (_, last) = server.requests().into_iter().last().unwrap();
    let query = last.split_once('?').unwrap().1;
    assert!(decode_query(query).contains(&(
        "fieldSelector".into(),
        "type=kubernetes.io/dockercfg".into()
    )));

    // Label selectors, with ADDED/DELETED as objects enter and leave the selection.
    server
        .apply(&with_labels(
            secret_opaque("ns", "l", &[]),
            &[("tier", "front")],
        ))
        .unwrap();
    let mut events = watch_all::<Secret>(
        server.kube_client(),
        watcher::Config::default().labels("tier=front"),
    );
    assert_eq!(
        until_init_done(&mut events).await,
        ["Init", "InitApply(l)", "InitDone"]
    );
    let (e, ()) = tokio::join!(next(&mut events), async {
        server.wait_for_watches("secrets", 2, WAIT).await.unwrap();
        server
            .apply(&with_labels(
                secret_opaque("ns", "l", &[]),
                &[("tier", "back")],
            ))
            .unwrap();
        server
            .apply(&with_labels(
                secret_opaque("ns", "l", &[]),
                &[("tier", "front")],
            ))
            .unwrap();
    });
    assert_eq!(e, "Delete(l)");
    assert_eq!(next(&mut events).await, "Apply(l)");
}

#[tokio::test]
async fn forbidden_resource_answers_403() {
    let server = server_with_namespace("ns").await;
    server.apply(&secret_opaque("ns", "s", &[])).unwrap();
    server.forbid("secrets");
    let secrets: Api<Secret> = Api::all(server.kube_client());
    let err = within("list", secrets.list(&ListParams::default()))
        .await
        .unwrap_err();
    let s = api_status(&err);
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert!(s.is_forbidden());
    assert_eq!(
        s.message,
        "secrets is forbidden: User \"system:anonymous\" cannot list resource \"secrets\" in API group \"\" at the cluster scope"
    );
    assert_eq!(s.details.as_ref().unwrap().kind, "secrets");
    let ns_secrets: Api<Secret> = Api::namespaced(server.kube_client(), "ns");
    let s = api_status(&within("get", ns_secrets.get("s")).await.unwrap_err()).clone();
    assert_eq!(s.code, 403);
    assert!(
        s.message
            .contains("cannot get resource \"secrets\" in API group \"\" in the namespace \"ns\""),
        "{}",
        s.message
    );

    // The watcher reports it (after its Init marker) as a failed initial list carrying the 403.
    let mut events = watch_all::<Secret>(server.kube_client(), watcher::Config::default());
    assert_eq!(next(&mut events).await, "Init");
    match within("event", events.next()).await.unwrap() {
        Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) => assert_eq!(s.code, 403),
        other => panic!("expected a 403 initial list failure, got {other:?}"),
    }
    // Other resources are unaffected; allowing again lets the watcher through.
    assert!(
        within(
            "pods",
            Api::<Pod>::all(server.kube_client()).list(&ListParams::default())
        )
        .await
        .is_ok()
    );
    server.allow("secrets");
    assert_eq!(
        until_init_done(&mut events).await,
        ["Init", "InitApply(s)", "InitDone"]
    );
}

#[tokio::test]
async fn watcher_errors_while_the_server_is_down_and_recovers() {
    let server = server_with_namespace("ns").await;
    server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    let mut events: Events<Deployment> =
        watch_all::<Deployment>(server.kube_client(), watcher::Config::default())
            .default_backoff()
            .boxed();
    assert_eq!(
        until_init_done(&mut events).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    let (e, ()) = tokio::join!(next(&mut events), async {
        server
            .wait_for_watches("deployments", 1, WAIT)
            .await
            .unwrap();
        server.apply(&deployment("ns", "b", &["b:1"])).unwrap();
    });
    assert_eq!(e, "Apply(b)");

    server.stop().await;
    assert!(!server.is_running());
    let e = next(&mut events).await;
    assert!(e.starts_with("Err(failed to start watching object"), "{e}");
    // Changes made while it is down (state is kept) arrive after the restart.
    server.apply(&deployment("ns", "c", &["c:1"])).unwrap();
    server.start_again().await.unwrap();
    let mut seen = Vec::new();
    loop {
        let e = next(&mut events).await;
        if e == "Apply(c)" {
            break;
        }
        assert!(e.starts_with("Err("), "unexpected {e}");
        seen.push(e);
    }
    assert_eq!(
        server.list_requests("deployments").len(),
        1,
        "resumed, not relisted"
    );
    let got = within(
        "get",
        Api::<Deployment>::namespaced(server.kube_client(), "ns").get("a"),
    )
    .await
    .unwrap();
    assert_eq!(got.name_any(), "a");
}

#[tokio::test]
async fn streaming_list_watcher_works() {
    let server = server_with_namespace("ns").await;
    server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    let mut events = watch_all::<Deployment>(
        server.kube_client(),
        watcher::Config::default().streaming_lists(),
    );
    assert_eq!(
        until_init_done(&mut events).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    server.apply(&deployment("ns", "b", &["b:1"])).unwrap();
    assert_eq!(next(&mut events).await, "Apply(b)");
    assert!(server.list_requests("deployments").is_empty());
    let w = &server.watch_requests("deployments")[0];
    assert!(
        w.contains(&("sendInitialEvents".into(), "true".into())),
        "{w:?}"
    );
}

#[tokio::test]
async fn metadata_only_requests() {
    let server = server_with_namespace("ns").await;
    server
        .apply(&with_labels(deployment("ns", "a", &["a:1"]), &[("k", "v")]))
        .unwrap();
    let api: Api<PartialObjectMeta<Deployment>> = Api::all(server.kube_client());
    let list = within("list", api.list(&ListParams::default()))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].labels().get("k").map(String::as_str),
        Some("v")
    );
    let mut events = watch_all::<PartialObjectMeta<Deployment>>(
        server.kube_client(),
        watcher::Config::default(),
    );
    assert_eq!(
        until_init_done(&mut events).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    server.apply(&deployment("ns", "b", &["b:1"])).unwrap();
    assert_eq!(next(&mut events).await, "Apply(b)");
}

#[tokio::test]
async fn kubeconfig_file_reaches_the_server() {
    let server = server_with_namespace("ns").await;
    let dir = tempfile::tempdir().unwrap();
    let path = server.kubeconfig(dir.path()).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let namespaces = within(
        "list",
        Api::<Namespace>::all(client).list(&ListParams::default()),
    )
    .await
    .unwrap();
    assert_eq!(namespaces.items[0].name_any(), "ns");
}

#[tokio::test]
async fn namespace_deletion_takes_its_contents() {
    let server = server_with_namespace("ns").await;
    server.apply(&deployment("ns", "a", &["a:1"])).unwrap();
    server.apply(&namespace("keep", &[])).unwrap();
    server.apply(&deployment("keep", "a", &["a:1"])).unwrap();
    let mut events = watch_all::<Deployment>(server.kube_client(), watcher::Config::default());
    until_init_done(&mut events).await;
    let (e, ()) = tokio::join!(next(&mut events), async {
        server
            .wait_for_watches("deployments", 1, WAIT)
            .await
            .unwrap();
        let namespaces: Api<Namespace> = Api::all(server.kube_client());
        within(
            "delete ns",
            namespaces.delete("ns", &DeleteParams::default()),
        )
        .await
        .unwrap();
    });
    assert_eq!(e, "Delete(a)");
    assert_eq!(server.list::<Deployment>().len(), 1);
}

/// The same calls against whatever `PULLWATCH_TEST_KUBECONFIG` selects (the test server here).
#[tokio::test]
async fn api_target_round_trip() {
    let target = ApiTarget::from_env().await.unwrap();
    let ns = "pullwatch-apitarget-test";
    target.ensure_namespace(ns).await.unwrap();
    target.ensure_namespace(ns).await.unwrap();
    let d = target
        .apply(&deployment(ns, "web", &["nginx:1"]))
        .await
        .unwrap();
    let d2 = target
        .apply(&deployment(ns, "web", &["nginx:2"]))
        .await
        .unwrap();
    assert_eq!(d.uid(), d2.uid());
    let got: Deployment = target.get(ns, "web").await.unwrap().unwrap();
    assert_eq!(
        got.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("nginx:2")
    );
    assert!(target.delete::<Deployment>(ns, "web").await.unwrap());
    target
        .wait_deleted::<Deployment>(ns, "web", WAIT)
        .await
        .unwrap();
    assert!(!target.delete::<Deployment>(ns, "web").await.unwrap());
    match target.test_server() {
        Some(_) => {
            assert_eq!(target.forbid("secrets"), Some(()));
            assert!(target.requests().unwrap().iter().any(|(m, _)| m == "PUT"));
        }
        None => assert_eq!(target.compact(), None),
    }
    target.delete::<Namespace>("", ns).await.unwrap();
}
