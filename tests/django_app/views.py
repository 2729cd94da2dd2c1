"""Views the integration tests call: write a note, fail after writing one, log in, log out."""

from __future__ import annotations

from django.contrib.auth import authenticate, login, logout
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from tests.django_app.models import Note


@csrf_exempt
def write(request: HttpRequest) -> HttpResponse:
    note = Note.objects.create(text=request.POST["text"])
    with connection.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        (pid,) = cur.fetchone()
    return JsonResponse({"id": note.pk, "pid": pid})


@csrf_exempt
def write_twice(request: HttpRequest) -> HttpResponse:
    """Two transactions of the view's own, one after the other: each needs the context."""
    for n in (1, 2):
        with transaction.atomic():
            Note.objects.create(text=f"{request.POST['text']} {n}")
    return HttpResponse("ok")


@csrf_exempt
def write_then_fail(request: HttpRequest) -> HttpResponse:
    """Writes a note in the view's own transaction, then fails: the note and its entry roll back."""
    with transaction.atomic():
        Note.objects.create(text=request.POST["text"])
        raise RuntimeError("the view failed after writing")


@csrf_exempt
def write_in_request_then_fail(request: HttpRequest) -> HttpResponse:
    """Writes outside any atomic of its own, then fails (rolled back only under ATOMIC_REQUESTS)."""
    Note.objects.create(text=request.POST["text"])
    raise RuntimeError("the view failed after writing")


@csrf_exempt
def sign_in(request: HttpRequest) -> HttpResponse:
    user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        if request.POST.get("then_fail"):
            raise RuntimeError("the request failed after a failed login")
        return HttpResponse("no", status=401)
    login(request, user)
    return HttpResponse("ok")


@csrf_exempt
def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("bye")
