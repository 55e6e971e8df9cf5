from django.urls import path

from accounts import views

app_name = "access"
urlpatterns = [
    path("", views.status, name="status"),
    path("apply/", views.apply, name="apply"),
    path("withdraw/", views.withdraw, name="withdraw"),
    path("reapply/", views.reapply, name="reapply"),
    path("license/", views.license_page, name="license"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
]
