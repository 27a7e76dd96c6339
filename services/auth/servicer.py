"""gRPC AuthService: translates messages to ``Accounts`` calls and back. Errors are the interceptor's job."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from protos.drtech.v1 import auth_pb2, auth_pb2_grpc
from services.auth.accounts import Accounts
from services.auth.models import User
from services.auth.session_metadata import SESSION_ENDS_IN_MS
from services.auth.validation import SIGN_UP_FIELDS


def user_message(user: User) -> auth_pb2.User:
    created_at = Timestamp()
    created_at.FromDatetime(user.created_at)
    return auth_pb2.User(
        id=str(user.id),
        email=user.email,
        first_name=user.first_name,
        surname=user.surname,
        address1=user.address1,
        address2=user.address2,
        city=user.city,
        state=user.state,
        zip=user.zip,
        gender=user.gender,
        birth_date=user.birth_date.isoformat() if user.birth_date else "",
        created_at=created_at,
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    def SignUp(self, request: auth_pb2.SignUpRequest, context: grpc.ServicerContext) -> auth_pb2.User:
        fields = {name: getattr(request, name) for name in SIGN_UP_FIELDS}
        return user_message(self._accounts.sign_up(fields, request.client_ip))

    def LogIn(self, request: auth_pb2.LogInRequest, context: grpc.ServicerContext) -> auth_pb2.Session:
        logged_in = self._accounts.log_in(request.email, request.password, request.client_ip)
        expires_at = Timestamp()
        expires_at.FromDatetime(logged_in.expires_at)
        return auth_pb2.Session(
            access_token=logged_in.access_token, expires_at=expires_at, user=user_message(logged_in.user)
        )

    def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: grpc.ServicerContext
    ) -> auth_pb2.User:
        user, ends_in = self._accounts.authenticate(request.access_token)
        context.set_trailing_metadata(((SESSION_ENDS_IN_MS, str(int(ends_in.total_seconds() * 1000))),))
        return user_message(user)

    def LogOut(
        self, request: auth_pb2.LogOutRequest, context: grpc.ServicerContext
    ) -> auth_pb2.LogOutResponse:
        return auth_pb2.LogOutResponse(user_id=self._accounts.log_out(request.access_token) or "")

    def GetUser(self, request: auth_pb2.GetUserRequest, context: grpc.ServicerContext) -> auth_pb2.User:
        return user_message(self._accounts.get_user(request.id))

    def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ChangePasswordResponse:
        ended = self._accounts.change_password(
            request.access_token, request.current_password, request.new_password, request.client_ip
        )
        return auth_pb2.ChangePasswordResponse(sessions_ended=ended)

    def LogOutAll(
        self, request: auth_pb2.LogOutAllRequest, context: grpc.ServicerContext
    ) -> auth_pb2.LogOutAllResponse:
        return auth_pb2.LogOutAllResponse(sessions_ended=self._accounts.log_out_all(request.access_token))
