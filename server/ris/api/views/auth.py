"""Token sign-in and the list of pipelines."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from drf_spectacular.utils import extend_schema
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from server.ris.api.serializers import ErrorOut, PipelineOut, TokenInput, TokenOut
from server.ris.pipeline_selectors import pipeline_list


class AuthTokenObtainApi(APIView):
    """Exchange a username and password for an API token (send it as ``Authorization: Token <key>``).

    Wrong passwords count towards the sign-in lockout (django-axes, per account and per address): past
    the limit this answers 429 with ``Retry-After``, the right password included.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=TokenInput, responses={200: TokenOut, 400: ErrorOut, 429: ErrorOut}, auth=[])
    def post(self, request: Request) -> Response:
        # The Django request, not DRF's wrapper: django-axes marks a locked-out attempt on it and its
        # middleware turns that mark into the 429.
        serializer = AuthTokenSerializer(data=request.data, context={"request": request._request})
        serializer.is_valid(raise_exception=True)
        user = serializer.validated_data["user"]
        # A sign-in like the page's: last_login is set and django-axes clears the account's failures.
        user_logged_in.send(sender=user.__class__, request=request._request, user=user)
        token, _ = Token.objects.get_or_create(user=user)
        return Response(TokenOut({"token": token.key}).data)


class PipelineListApi(APIView):
    """Pipelines a job may use, from the torch-free pipeline catalogue (the web process never loads the engine),
    each with what it needs and whether its models are in the store."""

    @extend_schema(responses={200: PipelineOut(many=True)})
    def get(self, request: Request) -> Response:
        engine = settings.RIS_ENGINE
        items = pipeline_list(profile=engine.profile, model_dir=engine.model_dir, device=engine.device)
        return Response(PipelineOut(items, many=True).data)
