//! Accounts: users, refresh-token families, API keys and failed logins.

use std::time::Duration;

use domain::accounts::{self, Role, Rotation};
use testkit::TestDb;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
const DAY: Duration = Duration::from_secs(86_400);

fn h(n: u8) -> Vec<u8> {
    vec![n; 32]
}

#[tokio::test]
async fn user_names_are_unique_whatever_their_case() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let alice = accounts::create_user(&c, "Alice", HASH, Role::User)
        .await
        .unwrap()
        .unwrap();
    assert!(
        accounts::create_user(&c, "alice", HASH, Role::Admin)
            .await
            .unwrap()
            .is_none()
    );
    let found = accounts::find_user(&c, "ALICE").await.unwrap().unwrap();
    assert_eq!((found.id, found.role), (alice.id, Role::User));
    assert!(accounts::get_user(&c, alice.id).await.unwrap().is_some());
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let u = accounts::create_user(&c, "bob", HASH, Role::User)
        .await
        .unwrap()
        .unwrap();
    accounts::start_refresh_family(&c, u.id, &h(1), DAY)
        .await
        .unwrap();
    assert_eq!(
        accounts::rotate_refresh(&c, &h(1), &h(2), DAY)
            .await
            .unwrap(),
        Rotation::Rotated { user_id: u.id }
    );
    assert_eq!(
        accounts::rotate_refresh(&c, &h(2), &h(3), DAY)
            .await
            .unwrap(),
        Rotation::Rotated { user_id: u.id }
    );
    // The first token comes back: a thief or a replay. The family dies, the newest token too.
    assert_eq!(
        accounts::rotate_refresh(&c, &h(1), &h(9), DAY)
            .await
            .unwrap(),
        Rotation::Reused
    );
    assert_eq!(
        accounts::rotate_refresh(&c, &h(3), &h(4), DAY)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    // Another login's family is untouched.
    accounts::start_refresh_family(&c, u.id, &h(5), DAY)
        .await
        .unwrap();
    assert_eq!(accounts::revoke_refresh_family(&c, &h(5)).await.unwrap(), 1);
    assert_eq!(
        accounts::rotate_refresh(&c, &h(5), &h(6), DAY)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    assert_eq!(
        accounts::rotate_refresh(&c, &h(7), &h(8), DAY)
            .await
            .unwrap(),
        Rotation::Invalid
    );
}

#[tokio::test]
async fn expired_refresh_tokens_are_refused() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let u = accounts::create_user(&c, "carol", HASH, Role::User)
        .await
        .unwrap()
        .unwrap();
    accounts::start_refresh_family(&c, u.id, &h(1), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        accounts::rotate_refresh(&c, &h(1), &h(2), DAY)
            .await
            .unwrap(),
        Rotation::Invalid
    );
}

#[tokio::test]
async fn api_keys_work_until_revoked() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let key = accounts::create_api_key(&c, "ci", "qk_abcd", &h(1), Role::Operator, None)
        .await
        .unwrap();
    let (id, name, role) = accounts::use_api_key(&c, &h(1)).await.unwrap().unwrap();
    assert_eq!((id, name.as_str(), role), (key.id, "ci", Role::Operator));
    let listed = accounts::list_api_keys(&c).await.unwrap();
    assert!(listed[0].last_used_at.is_some());
    assert!(accounts::use_api_key(&c, &h(2)).await.unwrap().is_none());
    assert!(accounts::revoke_api_key(&c, key.id).await.unwrap());
    assert!(!accounts::revoke_api_key(&c, key.id).await.unwrap());
    assert!(accounts::use_api_key(&c, &h(1)).await.unwrap().is_none());
    // The schema refuses admin keys.
    assert!(
        accounts::create_api_key(&c, "root", "qk_x", &h(3), Role::Admin, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn failed_logins_count_per_account_and_per_address() {
    let db = TestDb::new().await;
    let c = db.conn().await;
    let w = Duration::from_secs(900);
    let ip = Some("192.0.2.7".parse().unwrap());
    for _ in 0..3 {
        accounts::record_login_failure(&c, "dave", ip, w)
            .await
            .unwrap();
    }
    accounts::record_login_failure(&c, "erin", ip, w)
        .await
        .unwrap();
    accounts::record_login_failure(&c, "DAVE", None, w)
        .await
        .unwrap();
    assert_eq!(
        accounts::recent_login_failures(&c, "Dave", ip, w)
            .await
            .unwrap(),
        (4, 4)
    );
    assert_eq!(
        accounts::recent_login_failures(&c, "erin", None, w)
            .await
            .unwrap(),
        (1, 0)
    );
    accounts::clear_login_failures(&c, "dave").await.unwrap();
    assert_eq!(
        accounts::recent_login_failures(&c, "dave", ip, w)
            .await
            .unwrap(),
        (0, 1)
    );
}
