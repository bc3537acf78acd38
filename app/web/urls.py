"""HTTP routes served by the (lazily built) Django app."""

from django.urls import path

from app.web import views

urlpatterns = [
    path("", views.index, name="index"),
    path("static/<str:name>", views.asset, name="asset"),
    path("api/rooms/<str:room>/messages", views.room_messages, name="room-messages"),
    path("api/rooms/<str:room>/presence", views.room_presence, name="room-presence"),
]

# Unknown paths answer in the API's JSON error shape, not Django's HTML page.
handler404 = views.not_found
