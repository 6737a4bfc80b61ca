"""The browser gateway: Socket.IO inbox (connect/auth, rooms, replay, ack/read), inbox REST, demo.

`ws_gateway.app.create_app` builds the Flask app; `ws_gateway.serve.serve_gateway` runs it under
gunicorn's gevent worker for `omnipush serve gateway`.
"""
