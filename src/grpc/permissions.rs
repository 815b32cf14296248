//! The one table of what every loyalty RPC requires. The auth layer refuses a call whose method
//! is not in it, so a new RPC is closed until it is given a permission here.

use crate::domain::access::Permission::{
    self, AgreementsManage, AgreementsRead, CouponsManage, CouponsRead, HistoryRead, PointsAdjust,
    PointsEarn, Redeem, RedemptionsManage, RulesManage, RulesRead, SettingsManage, SettingsRead,
    SyncManage,
};

/// Method path → the permission it requires.
pub const RPC_PERMISSIONS: &[(&str, Permission)] = &[
    ("/one.loyalty.v1.SettingsService/GetSettings", SettingsRead),
    (
        "/one.loyalty.v1.SettingsService/UpdateSettings",
        SettingsManage,
    ),
    ("/one.loyalty.v1.EarnService/ProcessInvoice", PointsEarn),
    ("/one.loyalty.v1.EarnService/ProcessCorrection", PointsEarn),
    ("/one.loyalty.v1.EarnService/PreviewPoints", PointsEarn),
    ("/one.loyalty.v1.EarnService/ExplainDocument", HistoryRead),
    ("/one.loyalty.v1.LedgerService/GetBalance", HistoryRead),
    ("/one.loyalty.v1.LedgerService/ListEvents", HistoryRead),
    ("/one.loyalty.v1.LedgerService/GetEvent", HistoryRead),
    ("/one.loyalty.v1.LedgerService/AdjustPoints", PointsAdjust),
    ("/one.loyalty.v1.RedeemService/ListOffers", Redeem),
    ("/one.loyalty.v1.RedeemService/RedeemCoupon", Redeem),
    ("/one.loyalty.v1.RedeemService/GetRedemption", Redeem),
    ("/one.loyalty.v1.RedeemService/ListRedemptions", Redeem),
    (
        "/one.loyalty.v1.RedeemService/CancelRedemption",
        RedemptionsManage,
    ),
    ("/one.loyalty.v1.RedeemService/ReservePoints", Redeem),
    ("/one.loyalty.v1.RedeemService/CommitReservation", Redeem),
    ("/one.loyalty.v1.RedeemService/ReleaseReservation", Redeem),
    ("/one.loyalty.v1.RedeemService/GetReservation", Redeem),
    ("/one.loyalty.v1.RulesService/SetBasePoints", RulesManage),
    ("/one.loyalty.v1.RulesService/ListBasePoints", RulesRead),
    (
        "/one.loyalty.v1.RulesService/CreateMultiplierRule",
        RulesManage,
    ),
    (
        "/one.loyalty.v1.RulesService/UpdateMultiplierRule",
        RulesManage,
    ),
    (
        "/one.loyalty.v1.RulesService/PublishMultiplierRule",
        RulesManage,
    ),
    (
        "/one.loyalty.v1.RulesService/ArchiveMultiplierRule",
        RulesManage,
    ),
    ("/one.loyalty.v1.RulesService/GetMultiplierRule", RulesRead),
    (
        "/one.loyalty.v1.RulesService/ListMultiplierRules",
        RulesRead,
    ),
    ("/one.loyalty.v1.RulesService/SetSegmentRate", RulesManage),
    ("/one.loyalty.v1.RulesService/ListSegmentRates", RulesRead),
    ("/one.loyalty.v1.CouponService/CreateCoupon", CouponsManage),
    ("/one.loyalty.v1.CouponService/UpdateCoupon", CouponsManage),
    ("/one.loyalty.v1.CouponService/GetCoupon", CouponsRead),
    ("/one.loyalty.v1.CouponService/ListCoupons", CouponsRead),
    ("/one.loyalty.v1.CouponService/ArchiveCoupon", CouponsManage),
    ("/one.loyalty.v1.CouponService/ListCouponPools", CouponsRead),
    (
        "/one.loyalty.v1.AgreementService/RecordConsentEvents",
        AgreementsManage,
    ),
    (
        "/one.loyalty.v1.AgreementService/PublishAgreementVersion",
        AgreementsManage,
    ),
    (
        "/one.loyalty.v1.AgreementService/ListAgreementVersions",
        AgreementsRead,
    ),
    (
        "/one.loyalty.v1.AgreementService/GetUserConsent",
        AgreementsRead,
    ),
    (
        "/one.loyalty.v1.AgreementService/ListUserConsentHistory",
        AgreementsRead,
    ),
    (
        "/one.loyalty.v1.AgreementService/GetClientEligibility",
        AgreementsRead,
    ),
    (
        "/one.loyalty.v1.AgreementService/AnonymizeUser",
        AgreementsManage,
    ),
    ("/one.loyalty.v1.SyncService/TriggerSync", SyncManage),
    ("/one.loyalty.v1.SyncService/GetSyncStatus", SyncManage),
    ("/one.loyalty.v1.SyncService/ImportDocuments", SyncManage),
];

/// The permission a method path requires; `None` when it is not in the table.
pub fn required(path: &str) -> Option<Permission> {
    RPC_PERMISSIONS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, permission)| *permission)
}
