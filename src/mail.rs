//! SMTP with lettre, for the SPECIAL coupons' alert e-mails.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{SmtpSecurity, SmtpSettings};
use crate::domain::redemption::{AlertEmail, DeliveryOutcome};
use crate::service::outbox::Mailer;

/// Sends through the configured relay; `None` transport when no host is configured.
pub struct SmtpMailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("configured", &self.transport.is_some())
            .field("from", &self.from.to_string())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailConfigError {
    #[error("smtp.from {0:?} is not a mailbox: {1}")]
    From(String, lettre::address::AddressError),
    #[error("smtp relay: {0}")]
    Relay(#[from] lettre::transport::smtp::Error),
}

impl SmtpMailer {
    /// # Errors
    /// A malformed sender or relay settings.
    pub fn new(settings: &SmtpSettings) -> Result<Self, MailConfigError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| MailConfigError::From(settings.from.clone(), e))?;
        let host = settings.host.trim();
        if host.is_empty() {
            return Ok(Self {
                transport: None,
                from,
            });
        }
        let mut builder = match settings.security {
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
        }
        .port(settings.port)
        .timeout(Some(Duration::from_millis(settings.timeout_ms)));
        if !settings.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                settings.username.clone(),
                settings.password.clone(),
            ));
        }
        Ok(Self {
            transport: Some(builder.build()),
            from,
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &AlertEmail) -> DeliveryOutcome {
        let Some(transport) = &self.transport else {
            return DeliveryOutcome::Transient("no SMTP host is configured".into());
        };
        let to: Mailbox = match email.to.parse() {
            Ok(to) => to,
            Err(e) => return DeliveryOutcome::Rejected(format!("address {:?}: {e}", email.to)),
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ));
        let message = match message {
            Ok(m) => m,
            Err(e) => return DeliveryOutcome::Rejected(format!("message: {e}")),
        };
        match transport.send(message).await {
            Ok(_) => DeliveryOutcome::Delivered,
            // 5xx: the relay refuses this message for good.
            Err(e) if e.is_permanent() => DeliveryOutcome::Rejected(e.to_string()),
            Err(e) => DeliveryOutcome::Transient(e.to_string()),
        }
    }
}
